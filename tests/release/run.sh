#!/usr/bin/env bash
# Runs the release workflow (.github/workflows/release.yml) with act (GitHub Actions' runner,
# github.com/nektos/act) on this machine, as CI does: it publishes this commit's images and chart
# to the harness registry under HOST:PORT/releases, signed with a key made for the run.
#
#   tests/release/run.sh      # after tests/cluster/cluster.sh up (the registry) and
#                             # tests/images/build.sh (the stand-in daemon base, dind-daemon:test)
#
# What it leaves for the tests and the harness's installs, in $DIND_CLUSTER_DIR/release/:
#   registry, version    where the release is (HOST:PORT/releases) and its version
#   cosign.pub           the public key it was signed with; bin: where act, cosign and syft are
#   helm/registry.json   helm's registry login (HELM_REGISTRY_CONFIG), ca-bundle.crt the trust
#                        (system CAs and the registry's: SSL_CERT_FILE)
#   act.log              the workflow's log
#
# What runs differently from GitHub (act's -self-hosted platform runs the steps on this machine,
# no job container): act copies the working tree instead of checking it out; linux/amd64 only;
# a key instead of keyless signing; the stand-in daemon base (no docker:<ver>-dind here).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
state="${DIND_CLUSTER_DIR:-/tmp/dind-operator-cluster}"
dir="$state/release"
reg="$state/registry"
log() { echo ">> [release run $(date +%T)] $*" >&2; }

[[ -s $reg/host ]] || { echo "release: no harness registry ($reg/host): tests/cluster/cluster.sh up first" >&2; exit 1; }
host="$(cat "$reg/host")"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -n1)"
release_bin="$("$here/build.sh" | tail -n 1)"
clients="$("$here/../clients/build.sh" | tail -n 1)"
cluster_bin="$("$here/../cluster/build.sh" | tail -n 1)"

rm -rf "$dir"
mkdir -p "$dir/docker-config/cli-plugins" "$dir/helm" "$dir/xdg-config" "$dir/xdg-cache"
ln -s "$clients/docker-buildx" "$dir/docker-config/cli-plugins/docker-buildx"
cat /etc/ssl/certs/ca-certificates.crt "$reg/ca.crt" >"$dir/ca-bundle.crt"
# The run's signing key (the workflow's secret COSIGN_PRIVATE_KEY); tests verify with its public half.
COSIGN_PASSWORD="$(openssl rand -hex 16)"
export COSIGN_PASSWORD
(cd "$dir" && "$release_bin/cosign" generate-key-pair >/dev/null 2>&1)
COSIGN_PRIVATE_KEY="$(cat "$dir/cosign.key")"
REGISTRY_USER="$(cat "$reg/user")"
REGISTRY_PASSWORD="$(cat "$reg/password")"
export COSIGN_PRIVATE_KEY REGISTRY_USER REGISTRY_PASSWORD

# The steps see this environment (act's host platform passes it on): today's Docker CLI with
# buildx, helm, the release tools; logins and caches inside $dir; the registry's CA trusted.
export PATH="$release_bin:$clients:$cluster_bin:$PATH"
export DOCKER_CONFIG="$dir/docker-config" HELM_REGISTRY_CONFIG="$dir/helm/registry.json"
export HELM_CACHE_HOME="$dir/helm/cache" HELM_CONFIG_HOME="$dir/helm/config"
export XDG_CONFIG_HOME="$dir/xdg-config" XDG_CACHE_HOME="$dir/xdg-cache" SSL_CERT_FILE="$dir/ca-bundle.crt"
# cosign's Sigstore trust root (TUF) cache, which it would keep in ~/.sigstore.
export TUF_ROOT="$dir/sigstore"
# act copies the working tree without what .gitignore names (target/): the build reuses ours.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"

log "running .github/workflows/release.yml with act ($(act --version)), publishing to $host/releases"
start=$SECONDS
cd "$root"
if ! act workflow_dispatch -W .github/workflows/release.yml -P ubuntu-latest=-self-hosted \
  --input "registry=$host/releases" --input platforms=linux/amd64 --input daemon-base=dind-daemon:test \
  -s REGISTRY_USER -s REGISTRY_PASSWORD -s COSIGN_PRIVATE_KEY -s COSIGN_PASSWORD \
  --no-cache-server --action-offline-mode >"$dir/act.log" 2>&1; then
  tail -n 60 "$dir/act.log" >&2
  log "the release workflow failed (whole log: $dir/act.log)"
  exit 1
fi
rm -f "$dir/cosign.key"
echo "$host/releases" >"$dir/registry"
echo "$version" >"$dir/version"
echo "$release_bin" >"$dir/bin"
log "released $version to $host/releases in $((SECONDS - start))s"
