#!/usr/bin/env bash
# Builds the release tools from the Go module proxy and caches them outside the repo, keyed by
# their pins (apart from the cluster's, the clients' and the engine's binaries):
#
#   tests/release/build.sh        # prints the bin directory on its last line
#
#   act      github.com/nektos/act: runs .github/workflows/release.yml as GitHub would (run.sh)
#   cosign   github.com/sigstore/cosign/v3: signs and verifies the images and the chart
#   syft     github.com/anchore/syft: an SPDX SBOM per image (cosign attaches each, signed, to
#            its image as an attestation: an OCI artifact beside it)
#   kubeconform  github.com/yannh/kubeconform: checks the chart's rendering, strictly, against
#            schemas/vX.Y.Z-standalone-strict/ of each Kubernetes minor the chart supports (made
#            by k8s-schemas.py from that release's OpenAPI document) and schemas/crds/ (the
#            cert-manager Certificate the chart can render)
#
# The release workflow runs this script on GitHub's runners too: the same versions, built the same
# way (about 5 minutes cold on 2 cores: syft 3.3, cosign 1.2-2.7, act 1).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tools="$here/tools"
cache_root="${DIND_CACHE_DIR:-$HOME/.cache/dind-operator}"

key="$( { go version; cat "$tools"/*/go.mod "$tools"/*/go.sum "$here/build.sh" "$here/k8s-schemas.py"; } | sha256sum | cut -c1-16)"
bin="$cache_root/release/$key"
if [[ -f "$bin/.complete" ]]; then
  echo "$bin"
  exit 0
fi
mkdir -p "$bin"
# One build at a time (tests/run.sh builds in the background while a test may ask too).
exec 9>"$cache_root/release/.lock"
flock 9
if [[ -f "$bin/.complete" ]]; then
  echo "$bin"
  exit 0
fi
export CGO_ENABLED=0 GOFLAGS="-buildvcs=false -trimpath" GOTOOLCHAIN=local
start=$SECONDS
log() { echo ">> [release tools +$((SECONDS - start))s] $*" >&2; }

build() { # build <module dir> <module> <package> <ldflags, @V@ = the module's version>
  local dir=$1 module=$2 pkg=$3 version t0=$SECONDS
  [[ -x "$bin/$dir" ]] && return
  version="$(cd "$tools/$dir" && go list -m -f '{{.Version}}' "$module")"
  log "building $dir $version"
  (cd "$tools/$dir" && go build -ldflags "-s -w ${4//@V@/$version}" -o "$bin/$dir.tmp" "$pkg")
  mv "$bin/$dir.tmp" "$bin/$dir"
  log "built $dir in $((SECONDS - t0))s"
}
build act github.com/nektos/act github.com/nektos/act "-X main.version=@V@"
build cosign github.com/sigstore/cosign/v3 github.com/sigstore/cosign/v3/cmd/cosign \
  "-X sigs.k8s.io/release-utils/version.gitVersion=@V@"
build syft github.com/anchore/syft github.com/anchore/syft/cmd/syft "-X main.version=@V@"

build kubeconform github.com/yannh/kubeconform github.com/yannh/kubeconform/cmd/kubeconform ""

# The newest patch the module proxy serves of each minor the chart supports (docs/install.md).
kubernetes_versions=(v1.29.6 v1.30.14 v1.31.14 v1.32.13 v1.33.13 v1.34.4 v1.35.4 v1.36.3 v1.37.2)
cert_manager=github.com/cert-manager/cert-manager@v1.21.2:deploy/crds/cert-manager.io_certificates.yaml
if [[ ! -d $bin/schemas/crds ]]; then
  log "making Kubernetes' schemas for kubeconform (${kubernetes_versions[*]})"
  rm -rf "$bin/schemas.tmp"
  python3 "$here/k8s-schemas.py" kubernetes "$bin/schemas.tmp" "${kubernetes_versions[@]}"
  python3 "$here/k8s-schemas.py" crds "$bin/schemas.tmp/crds" "$cert_manager"
  mv "$bin/schemas.tmp" "$bin/schemas"
fi

touch "$bin/.complete"
log "all release tools built"
echo "$bin"
