#!/usr/bin/env bash
# Builds the test cluster's binaries from the Go modules pinned under tests/cluster/tools and
# caches them outside the repo, keyed by the pins, so a warm run costs a second.
#
#   tests/cluster/build.sh        # prints the bin directory on its last line
#
# Components: kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy,
# kubectl (v1.35.4), etcd + etcdctl (v3.6), helm (v3), coredns (the node's cluster DNS).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tools="$here/tools"
cache_root="${DIND_CACHE_DIR:-$HOME/.cache/dind-operator}"

# The cache key covers every pin and the Go toolchain; change a version and it rebuilds.
key="$( { go version; cat "$tools"/*/go.mod "$tools"/*/go.sum "$here/build.sh"; } | sha256sum | cut -c1-16)"
bin="$cache_root/bin/$key"
if [[ -f "$bin/.complete" ]]; then
  echo "$bin"
  exit 0
fi
mkdir -p "$bin"

export CGO_ENABLED=0 GOFLAGS="-buildvcs=false -trimpath" GOTOOLCHAIN=local
start=$SECONDS
build() { # build <module dir> <ldflags> <output name> <package>
  local dir=$1 ldflags=$2 name=$3 pkg=$4 t0=$SECONDS
  if [[ -x "$bin/$name" ]]; then return; fi
  echo ">> building $name ($pkg)" >&2
  (cd "$tools/$dir" && go build -ldflags "-s -w $ldflags" -o "$bin/$name.tmp" "$pkg")
  mv "$bin/$name.tmp" "$bin/$name"
  echo ">> built $name in $((SECONDS - t0))s (total $((SECONDS - start))s)" >&2
}

k8s_version=v1.35.4
k8s_commit=7b8c6cf0edd376b3d7c2f255142977c7f93db258
k8s_flags=""
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  k8s_flags+=" -X $p.gitVersion=$k8s_version -X $p.gitMajor=1 -X $p.gitMinor=35"
  k8s_flags+=" -X $p.gitCommit=$k8s_commit -X $p.gitTreeState=clean -X $p.buildDate=2026-04-01T00:00:00Z"
done
for c in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl; do
  pkg="k8s.io/kubernetes/cmd/$c"
  build kubernetes "$k8s_flags" "$c" "$pkg"
done

etcd_version="$(cd "$tools/etcd" && go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)"
build etcd "-X go.etcd.io/etcd/api/v3/version.GitSHA=$etcd_version" etcd go.etcd.io/etcd/server/v3
build etcd "-X go.etcd.io/etcd/api/v3/version.GitSHA=$etcd_version" etcdctl go.etcd.io/etcd/etcdctl/v3

helm_version="$(cd "$tools/helm" && go list -m -f '{{.Version}}' helm.sh/helm/v3)"
build helm "-X helm.sh/helm/v3/internal/version.version=$helm_version -X helm.sh/helm/v3/internal/version.gitTreeState=clean" \
  helm helm.sh/helm/v3/cmd/helm

coredns_version="$(cd "$tools/coredns" && go list -m -f '{{.Version}}' github.com/coredns/coredns)"
build coredns "-X github.com/coredns/coredns/coremain.GitCommit=$coredns_version" coredns github.com/coredns/coredns

touch "$bin/.complete"
echo ">> all components built in $((SECONDS - start))s" >&2
echo "$bin"
