#!/usr/bin/env bash
# build-spire.sh VERSION OUTDIR: builds spire-server and spire-agent from the
# Go module proxy into OUTDIR. `go install ...@VERSION` does not work with
# proxies that refuse version lists, so the module is downloaded by exact
# version and built from a writable copy. Cold, this takes several minutes
# (cgo, for sqlite); the Makefile runs it once and keeps the result.
set -euo pipefail
version=$1
out=$2
src=$(go mod download -json "github.com/spiffe/spire@${version}" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
if [ -z "$src" ] || [ ! -d "$src" ]; then
	echo "build-spire: go mod download github.com/spiffe/spire@${version} gave no folder" >&2
	exit 1
fi
work=$(mktemp -d)
trap 'chmod -R u+w "$work"; rm -rf "$work"' EXIT
cp -r "$src" "$work/spire"
chmod -R u+w "$work/spire"
mkdir -p "$out"
cd "$work/spire"
CGO_ENABLED=1 go build -trimpath -o "$out/" ./cmd/spire-server ./cmd/spire-agent
"$out/spire-server" --version >/dev/null 2>&1 || "$out/spire-server" -version >/dev/null 2>&1 || true
echo "build-spire: $out/spire-server and $out/spire-agent ($version)"
