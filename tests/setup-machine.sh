#!/usr/bin/env bash
# Installs what the tests and the quickstart need on a fresh Debian machine (as root), and
# nothing when it is already there. Go and Rust toolchains are expected on the machine.
set -euo pipefail

packages=(docker.io containerd runc iptables containernetworking-plugins conntrack socat
          iproute2 busybox-static openssl curl ca-certificates
          libseccomp-dev pkg-config gcc libc6-dev apache2-utils jq python3-yaml)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo ">> [setup] installing: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
for tool in go cargo; do
  command -v "$tool" >/dev/null || { echo "setup: $tool is not on PATH" >&2; exit 1; }
done
# The docker CLI: Debian's (/usr/bin/docker) is enough; a newer one on PATH is fine too.
command -v docker >/dev/null || { echo "setup: no docker CLI after installing docker.io" >&2; exit 1; }
