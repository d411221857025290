#!/usr/bin/env bash
# build-prometheus.sh VERSION OUT: builds the Prometheus server (module
# github.com/prometheus/prometheus at VERSION, e.g. v0.316.0 = Prometheus
# 3.x) from the Go module proxy into the file OUT. The e2e test of the
# Istio metrics (e2e/istiometrics_test.go) scrapes the sidecars with it and
# evaluates the Istio dashboards' queries. There is no release download
# here, so a throw-away module requires it. It is built without the
# service discovery plugins (build tag remove_all_sd: the cloud SDKs are
# most of its code; static_configs, which the test uses, stay): cold
# about 2.5 minutes instead of 5. The Makefile runs it once and keeps the
# binary.
set -euo pipefail
version=$1
out=$2
mkdir -p "$(dirname "$out")"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
printf 'module pillion.local/promtools\n\ngo 1.26\n' >go.mod
go get -tags remove_all_sd "github.com/prometheus/prometheus/cmd/prometheus@${version}"
CGO_ENABLED=0 go build -tags remove_all_sd -trimpath -ldflags "-s -w" -o "$out.tmp" github.com/prometheus/prometheus/cmd/prometheus
mv "$out.tmp" "$out"
"$out" --version | head -1
echo "build-prometheus: $out"
