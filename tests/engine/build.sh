#!/usr/bin/env bash
# Builds the Docker Engine our chart ships, the node's container runtime and a registry from the
# Go module proxy, and caches them outside the repo, keyed by their pins (apart from the cluster's
# and the clients' binaries, so an engine bump rebuilds only these):
#
#   tests/engine/build.sh        # prints the bin directory on its last line
#
#   dockerd, docker-proxy             github.com/docker/docker@v<DEFAULT_DOCKER_VERSION>+incompatible
#   containerd, containerd-shim-runc-v2, runc
#                                     the containerd and runc that Docker release pins (its own
#                                     Dockerfile's CONTAINERD_VERSION / RUNC_VERSION): what the
#                                     daemon image (docker:<ver>-dind's layout) and the test dockerd run
#   node/containerd, node/containerd-shim-runc-v2, node/ctr
#                                     containerd 2 (CRI): the test node's runtime, with the same runc
#   registry                          github.com/distribution/distribution/v3: the harness registry
#
# One source of truth for the engine: the operator's DEFAULT_DOCKER_VERSION
# (operator/src/crd/mod.rs). Bump it and this script builds that engine (it refuses a version it
# has no containerd/runc pins for, naming where to find them). docs/engine.md says how each
# piece is built and why.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cache_root="${DIND_CACHE_DIR:-$HOME/.cache/dind-operator}"

docker_version="$(sed -n 's/^pub const DEFAULT_DOCKER_VERSION: &str = "\(.*\)";/\1/p' "$root/operator/src/crd/mod.rs")"
[[ -n $docker_version ]] || { echo "engine: no DEFAULT_DOCKER_VERSION in operator/src/crd/mod.rs" >&2; exit 1; }
# What each Docker release pins (moby's Dockerfile at the release tag: CONTAINERD_VERSION,
# RUNC_VERSION) and the commit `docker version` reports (cosmetic).
case $docker_version in
  28.5.2) docker_commit=89c5e8f containerd_version=v1.7.28 runc_version=v1.3.3 ;;
  *)
    echo "engine: no containerd/runc pins for Docker $docker_version: add them to $0 from moby's Dockerfile at v$docker_version" >&2
    exit 1
    ;;
esac
node_containerd_version=v2.1.9
registry_version=v3.1.2
# runc v1.3.3 replaces go-selinux with a directory that is its own module (not in the module
# zip); upstream go-selinux v1.13.1 carries the same CVE-2025-52881 fix (runc v1.3.4 requires it).
selinux_fix=v1.13.1

key="$( { go version; echo "$docker_version $docker_commit $containerd_version $runc_version $node_containerd_version $registry_version $selinux_fix"; \
  cat "$here/build.sh"; } | sha256sum | cut -c1-16)"
bin="$cache_root/engine/$key"
if [[ -f "$bin/.complete" ]]; then
  echo "$bin"
  exit 0
fi
mkdir -p "$bin/node"
export GOFLAGS="-mod=mod -buildvcs=false" GOTOOLCHAIN=local
start=$SECONDS
log() { echo ">> [engine +$((SECONDS - start))s] $*" >&2; }
work="$(mktemp -d)"
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
mkdir -p "$work/probe"
(cd "$work/probe" && go mod init probe >/dev/null 2>&1)

src() { # src MODULE VERSION NAME -> prints a writable copy of the module's source
  local dir
  dir="$(cd "$work/probe" && go mod download -json "$1@$2" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  [[ -n $dir ]] || { echo "engine: go mod download $1@$2 failed" >&2; return 1; }
  cp -r "$dir" "$work/$3"
  chmod -R u+w "$work/$3"
  # Module zips keep only vendor/modules.txt, which would force a broken -mod=vendor.
  rm -rf "$work/$3/vendor"
  echo "$work/$3"
}

# dockerd and docker-proxy: moby publishes no go.mod (vendor.mod, like the CLI).
if [[ ! -x $bin/dockerd ]]; then
  log "building dockerd $docker_version and docker-proxy"
  d="$(src github.com/docker/docker "v$docker_version+incompatible" moby)"
  cp "$d/vendor.mod" "$d/go.mod"
  cp "$d/vendor.sum" "$d/go.sum"
  dv=github.com/docker/docker/dockerversion
  (cd "$d" && CGO_ENABLED=0 go build -trimpath \
    -tags 'exclude_graphdriver_btrfs exclude_graphdriver_devicemapper exclude_disk_quota netgo osusergo' \
    -ldflags "-s -w -X $dv.Version=$docker_version -X $dv.GitCommit=$docker_commit -X $dv.PlatformName=Docker_Engine_-_Community" \
    -o "$bin/docker-proxy.tmp" ./cmd/docker-proxy && \
    CGO_ENABLED=0 go build -trimpath \
    -tags 'exclude_graphdriver_btrfs exclude_graphdriver_devicemapper exclude_disk_quota netgo osusergo' \
    -ldflags "-s -w -X $dv.Version=$docker_version -X $dv.GitCommit=$docker_commit -X $dv.PlatformName=Docker_Engine_-_Community" \
    -o "$bin/dockerd.tmp" ./cmd/dockerd)
  mv "$bin/docker-proxy.tmp" "$bin/docker-proxy"
  mv "$bin/dockerd.tmp" "$bin/dockerd"
fi

containerd() { # containerd VERSION OUTDIR [extra commands]
  local version=$1 out=$2 mod=github.com/containerd/containerd c
  shift 2
  case $version in v2.*) mod=$mod/v2 ;; esac
  c="$(src "$mod" "$version" "containerd-$version")"
  (cd "$c" && CGO_ENABLED=0 go build -trimpath -tags 'no_btrfs netgo osusergo' \
    -ldflags "-s -w -X $mod/version.Version=$version -X $mod/version.Package=$mod" \
    -o "$out/" ./cmd/containerd ./cmd/containerd-shim-runc-v2 "$@")
}
if [[ ! -x $bin/containerd ]]; then
  log "building containerd $containerd_version (the engine's)"
  containerd "$containerd_version" "$work/c1"
  mv "$work/c1/containerd-shim-runc-v2" "$bin/containerd-shim-runc-v2"
  mv "$work/c1/containerd" "$bin/containerd"
fi
if [[ ! -x $bin/node/containerd ]]; then
  log "building containerd $node_containerd_version (the node's, CRI) and ctr"
  containerd "$node_containerd_version" "$work/c2" ./cmd/ctr
  mv "$work/c2/containerd-shim-runc-v2" "$work/c2/ctr" "$bin/node/"
  mv "$work/c2/containerd" "$bin/node/containerd"
fi

# runc: cgo (nsenter, libseccomp), static-pie as upstream's `make static`.
if [[ ! -x $bin/runc ]]; then
  log "building runc $runc_version"
  r="$(src github.com/opencontainers/runc "$runc_version" runc)"
  if grep -q '=> ./internal/third_party/selinux' "$r/go.mod"; then
    (cd "$r" && go mod edit -dropreplace github.com/opencontainers/selinux \
      -replace "github.com/opencontainers/selinux=github.com/opencontainers/selinux@$selinux_fix")
  fi
  (cd "$r" && CGO_ENABLED=1 go build -trimpath -buildmode=pie -tags 'seccomp urfave_cli_no_docs netgo osusergo' \
    -ldflags "-s -w -X main.version=${runc_version#v} -X main.gitCommit=$runc_version-gomod -linkmode external -extldflags -static-pie" \
    -o "$bin/runc.tmp" .)
  mv "$bin/runc.tmp" "$bin/runc"
fi
ln -sf ../runc "$bin/node/runc"

if [[ ! -x $bin/registry ]]; then
  log "building the registry (distribution $registry_version)"
  g="$(src github.com/distribution/distribution/v3 "$registry_version" distribution)"
  (cd "$g" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X github.com/distribution/distribution/v3/version.version=$registry_version" \
    -o "$bin/registry.tmp" ./cmd/registry)
  mv "$bin/registry.tmp" "$bin/registry"
fi

"$bin/dockerd" --version >&2
"$bin/containerd" --version >&2
"$bin/node/containerd" --version >&2
"$bin/runc" --version | head -n1 >&2
touch "$bin/.complete"
log "engine, runtime and registry built"
echo "$bin"
