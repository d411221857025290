#!/usr/bin/env bash
# build-kube.sh VERSION ETCD_VERSION OUTDIR: builds kube-apiserver, etcd and
# kube-controller-manager (whose EndpointSlice controller the discovery tests
# run) from the Go module proxy into OUTDIR, the folder envtest's
# KUBEBUILDER_ASSETS points at. There is no release download here, so a
# throw-away tools module requires k8s.io/kubernetes and replaces each of
# its staging modules (k8s.io/api, k8s.io/apiserver, ...) with the published
# v0.x.y of the same release, as the main module's go.mod does with ./staging.
# Cold, this takes several minutes and about 2.5 GB of memory; the Makefile
# runs it once and keeps the result.
set -euo pipefail
version=$1       # v1.36.3
etcd_version=$2  # v3.6.8
out=$(mkdir -p "$3" && cd "$3" && pwd)
staging=v0.${version#v1.}

gomod=$(go mod download -json "k8s.io/kubernetes@${version}" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
if [ -z "$gomod" ] || [ ! -f "$gomod" ]; then
	echo "build-kube: go mod download k8s.io/kubernetes@${version} gave no go.mod" >&2
	exit 1
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
{
	echo "module pillion.local/kubetools"
	echo
	echo "go 1.26"
	echo
	echo "require k8s.io/kubernetes ${version}"
	echo
	# Every `k8s.io/x => ./staging/src/k8s.io/x` of kubernetes' own go.mod,
	# except the sample plugin, which is not published.
	sed -n 's|^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*$|\1|p' "$gomod" |
		grep -v '^k8s.io/sample-cli-plugin$' |
		while read -r m; do echo "replace $m => $m ${staging}"; done
} >go.mod
if ! grep -q '^replace k8s.io/api ' go.mod; then
	echo "build-kube: found no staging replace lines in $gomod" >&2
	exit 1
fi
go get "k8s.io/kubernetes/cmd/kube-apiserver@${version}" "k8s.io/kubernetes/cmd/kube-controller-manager@${version}" \
	"go.etcd.io/etcd/server/v3@${etcd_version}"
mkdir -p "$out"
pkg=k8s.io/component-base/version
ldflags="-s -w -X ${pkg}.gitVersion=${version} -X ${pkg}.gitMajor=1 -X ${pkg}.gitMinor=$(echo "$version" | cut -d. -f2)"
CGO_ENABLED=0 go build -trimpath -o "$out/kube-apiserver" -ldflags "$ldflags" k8s.io/kubernetes/cmd/kube-apiserver
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$out/etcd" go.etcd.io/etcd/server/v3
# Built last: the Makefile takes it as the sign that the folder is complete.
CGO_ENABLED=0 go build -trimpath -o "$out/kube-controller-manager" -ldflags "$ldflags" k8s.io/kubernetes/cmd/kube-controller-manager
"$out/kube-apiserver" --version
"$out/kube-controller-manager" --version
"$out/etcd" --version | head -1
echo "build-kube: $out/kube-apiserver, $out/etcd and $out/kube-controller-manager"
