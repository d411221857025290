#!/usr/bin/env bash
# gen-certs.sh [--force] [DIR] writes the injector's serving certificate for
# clusters without cert-manager, with openssl alone:
#
#   DIR/ca.crt    a private CA (ECDSA P-256, 10 years); its key is thrown away
#   DIR/tls.crt   the serving certificate, signed by that CA (ECDSA P-256, 1 year),
#                 for pillion-injector.pillion-system.svc and .svc.cluster.local
#   DIR/tls.key   its key (mode 0600)
#
# DIR defaults to deploy/self-signed/certs, where deploy/self-signed's
# kustomization reads them (git ignores that folder). Existing files are never
# overwritten unless --force is given.
#
# The CA's key is never written: the CA signs this one certificate and nothing
# else can be minted under it. Its 10 years only have to outlast the serving
# certificate; to rotate, run this again with --force and re-apply
# (deploy/README.md, "Certificate rotation").
set -euo pipefail

usage() {
	echo "usage: $0 [--force] [DIR]" >&2
	exit 2
}

force=0
dir=""
for arg in "$@"; do
	case "$arg" in
	--force) force=1 ;;
	-h | --help) usage ;;
	-*) echo "gen-certs.sh: unknown flag $arg" >&2; usage ;;
	*)
		[[ -z "$dir" ]] || usage
		dir="$arg"
		;;
	esac
done
dir="${dir:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/certs}"

service=pillion-injector
namespace=pillion-system
ca_days=3650
tls_days=365

command -v openssl >/dev/null || { echo "gen-certs.sh: openssl not found" >&2; exit 1; }

if [[ $force -eq 0 ]]; then
	for f in ca.crt tls.crt tls.key; do
		if [[ -e "$dir/$f" ]]; then
			echo "gen-certs.sh: $dir/$f exists; not overwriting it (--force to replace all three)" >&2
			exit 1
		fi
	done
fi

umask 077
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# The CA.
openssl ecparam -name prime256v1 -genkey -noout -out "$work/ca.key"
openssl req -x509 -new -sha256 -key "$work/ca.key" -days "$ca_days" \
	-subj "/O=pillion/CN=pillion-injector-ca" \
	-addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
	-addext "keyUsage=critical,keyCertSign,cRLSign" \
	-addext "subjectKeyIdentifier=hash" \
	-out "$work/ca.crt" 2>/dev/null

# The serving certificate. The API server checks the name it dialled
# (<service>.<namespace>.svc) against the SANs; the CN is not used.
openssl ecparam -name prime256v1 -genkey -noout -out "$work/tls.key"
openssl req -new -sha256 -key "$work/tls.key" \
	-subj "/O=pillion/CN=$service.$namespace.svc" \
	-out "$work/tls.csr"
cat >"$work/tls.ext" <<EXT
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = DNS:$service.$namespace.svc,DNS:$service.$namespace.svc.cluster.local
EXT
openssl x509 -req -sha256 -in "$work/tls.csr" -days "$tls_days" \
	-CA "$work/ca.crt" -CAkey "$work/ca.key" -CAcreateserial \
	-extfile "$work/tls.ext" -out "$work/tls.crt" 2>/dev/null
openssl verify -CAfile "$work/ca.crt" "$work/tls.crt" >/dev/null

# Only now, with everything made and checked, replace the files.
mkdir -p "$dir"
chmod 0644 "$work/ca.crt" "$work/tls.crt"
chmod 0600 "$work/tls.key"
mv -f "$work/ca.crt" "$work/tls.crt" "$work/tls.key" "$dir/"
echo "wrote $dir/ca.crt, $dir/tls.crt, $dir/tls.key (serving certificate valid until $(openssl x509 -noout -enddate -in "$dir/tls.crt" | cut -d= -f2))"
