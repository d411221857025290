#!/usr/bin/env bash
# Installs the system tools pillion's tests and demo use, if they are missing:
# iptables and ip6tables (nf_tables), ip (iproute2), setpriv (util-linux),
# bash, gcc for the race detector, curl (the HTTP tests' client) and ss
# (iproute2, counts connections between sidecars), haproxy (make bench's peer
# proxy) and openssl (deploy/self-signed/gen-certs.sh). With --proto, only
# protoc (protobuf-compiler), for `make proto`. Debian/Ubuntu (apt-get) only.
set -euo pipefail

need=()
if [ "${1:-}" = --proto ]; then
  command -v protoc >/dev/null || need+=(protobuf-compiler)
else
  command -v iptables  >/dev/null || need+=(iptables)
  command -v ip6tables >/dev/null || need+=(iptables)
  command -v ip        >/dev/null || need+=(iproute2)
  command -v setpriv   >/dev/null || need+=(util-linux)
  command -v bash      >/dev/null || need+=(bash)
  command -v gcc       >/dev/null || need+=(gcc)
  command -v curl      >/dev/null || need+=(curl)
  command -v ss        >/dev/null || need+=(iproute2)
  command -v haproxy   >/dev/null || need+=(haproxy)
  command -v openssl   >/dev/null || need+=(openssl)
fi
[ ${#need[@]} -eq 0 ] && exit 0

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "missing: ${need[*]}; install them (as root, with your package manager) and run again" >&2
  # Without root the privileged tests skip anyway; only fail where they must run.
  [ "${CI:-}" = true ] && exit 1
  exit 0
fi
echo "installing: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
