#!/usr/bin/env bash
# build-jaeger.sh VERSION OUT: builds the Jaeger v2 all-in-one binary (OTLP
# receiver, in-memory storage, query API) from the Go module proxy into the
# file OUT, in a throw-away module so its dependencies never reach pillion's
# go.mod. Cold this takes about 4 minutes and 2.3 GB RSS; the Makefile runs
# it once and keeps the result.
set -euo pipefail
version=$1
out=$2
work=$(mktemp -d)
trap 'chmod -R u+w "$work"; rm -rf "$work"' EXIT
cd "$work"
go mod init jaegerbuild >/dev/null 2>&1
go get -tool "github.com/jaegertracing/jaeger/cmd/jaeger@${version}"
mkdir -p "$(dirname "$out")"
CGO_ENABLED=0 go build -trimpath -o "$out" github.com/jaegertracing/jaeger/cmd/jaeger
echo "build-jaeger: $out ($version)"
