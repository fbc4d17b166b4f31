#!/usr/bin/env bash
# Builds today's Docker clients from the Go module proxy and caches them outside the repo, keyed
# by their pins (separately from the cluster's binaries, so a client bump rebuilds only these):
#
#   tests/clients/build.sh        # prints the bin directory on its last line
#
#   docker                 Docker CLI v29 (github.com/docker/cli)
#   docker-buildx          buildx v0.38 (github.com/docker/buildx), the CLI plugin behind `docker build`
#   docker-compose         compose v2.40 (github.com/docker/compose/v2)
#   sdk.test               a Testcontainers-go v0.45 test (tools/testcontainers), run inside pods
#   buildkitd, buildctl    BuildKit v0.34 (tools/buildkit), for the image the buildx
#                          docker-container driver runs (moby/buildkit:buildx-stable-1)
#   ryuk, ryuk-image       a stand-in for Testcontainers' Ryuk (tools/reaper: moby-ryuk is not
#                          served here; it speaks Ryuk's protocol), and the image name that
#                          Testcontainers-go runs it as (its ReaperDefaultImage)
#
# The Docker CLI publishes no go.mod (it keeps vendor.mod, and builds through a temporary go.mod,
# as its own scripts/with-go-mod.sh does). So does this script: it copies the module from the Go
# module cache, makes vendor.mod its go.mod, and builds cmd/docker. Two modules the CLI needs are
# refused by the Go module proxy here; tools/docker-cli/README.md says what stands in for them.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tools="$here/tools"
cache_root="${DIND_CACHE_DIR:-$HOME/.cache/dind-operator}"

docker_cli_version=v29.9.3+incompatible
swarmkit_version=v2.1.3-0.20260828175525-ad0357aedfca

key="$( { go version; echo "$docker_cli_version $swarmkit_version"; cat "$tools"/*/go.mod "$tools"/*/go.sum "$tools"/*/*.go \
  "$tools"/docker-cli/rosetta/* "$here/build.sh"; } | sha256sum | cut -c1-16)"
bin="$cache_root/clients/$key"
if [[ -f "$bin/.complete" ]]; then
  echo "$bin"
  exit 0
fi
mkdir -p "$bin"
export CGO_ENABLED=0 GOFLAGS="-buildvcs=false -trimpath" GOTOOLCHAIN=local
start=$SECONDS
log() { echo ">> [clients +$((SECONDS - start))s] $*" >&2; }

if [[ ! -x $bin/docker ]]; then
  log "building the Docker CLI $docker_cli_version"
  src="$(cd "$tools/buildx" && go mod download -json "github.com/docker/cli@$docker_cli_version" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')"
  work="$(mktemp -d)"
  trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
  cp -r "$src" "$work/cli"
  chmod -R u+w "$work/cli"
  (
    cd "$work/cli"
    cp vendor.mod go.mod
    cp vendor.sum go.sum
    cat >>go.mod <<EOF

replace github.com/tonistiigi/go-rosetta => $tools/docker-cli/rosetta
replace github.com/moby/swarmkit/v2 => github.com/moby/swarmkit/v2 $swarmkit_version
EOF
    version="${docker_cli_version#v}"
    GOFLAGS="$GOFLAGS -mod=mod" go build -ldflags "-s -w -X github.com/docker/cli/cli/version.Version=${version%+incompatible}" \
      -o "$bin/docker.tmp" ./cmd/docker
  )
  mv "$bin/docker.tmp" "$bin/docker"
fi

build() { # build <module dir> <ldflags> <output name> <package>
  local dir=$1 ldflags=$2 name=$3 pkg=$4
  [[ -x "$bin/$name" ]] && return
  log "building $name ($pkg)"
  (cd "$tools/$dir" && go build -ldflags "-s -w $ldflags" -o "$bin/$name.tmp" "$pkg")
  mv "$bin/$name.tmp" "$bin/$name"
}
buildx_version="$(cd "$tools/buildx" && go list -m -f '{{.Version}}' github.com/docker/buildx)"
build buildx "-X github.com/docker/buildx/version.Version=$buildx_version" docker-buildx github.com/docker/buildx/cmd/buildx
compose_version="$(cd "$tools/compose" && go list -m -f '{{.Version}}' github.com/docker/compose/v2)"
build compose "-X github.com/docker/compose/v2/internal.Version=$compose_version" docker-compose github.com/docker/compose/v2/cmd
if [[ ! -x $bin/sdk.test ]]; then
  log "building the Testcontainers test"
  (cd "$tools/testcontainers" && go test -c -o "$bin/sdk.test.tmp" .)
  mv "$bin/sdk.test.tmp" "$bin/sdk.test"
fi

build buildkit "" buildkitd github.com/moby/buildkit/cmd/buildkitd
build buildkit "" buildctl github.com/moby/buildkit/cmd/buildctl
if [[ ! -x $bin/ryuk ]]; then
  log "building the Ryuk stand-in (tools/reaper)"
  (cd "$tools/reaper" && go build -ldflags "-s -w" -o "$bin/ryuk.tmp" .)
  mv "$bin/ryuk.tmp" "$bin/ryuk"
fi
# The image Testcontainers runs as its reaper: read from the module, so a bump follows.
tc_dir="$(cd "$tools/testcontainers" && go list -m -f '{{.Dir}}' github.com/testcontainers/testcontainers-go)"
sed -n 's/^const ReaperDefaultImage = "\(.*\)"$/\1/p' "$tc_dir/internal/config/config.go" >"$bin/ryuk-image"
[[ -s $bin/ryuk-image ]] || { echo "ReaperDefaultImage not found in $tc_dir/internal/config/config.go" >&2; exit 1; }

touch "$bin/.complete"
log "all clients built"
echo "$bin"
