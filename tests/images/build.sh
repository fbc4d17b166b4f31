#!/usr/bin/env bash
# Builds the project's images locally (no registry is reachable here) and loads them.
#
#   tests/images/build.sh                 # build, load into the Docker daemon at $DOCKER_HOST
#   tests/images/build.sh --containerd    # also load into containerd's k8s.io namespace
#
# It removes the images its tags pointed at before, once they have no tag left: each build
# re-tags, and the replaced images would pile up (a few hundred MB a build).
#
# Images (tag = the crate version):
#   dind-init:VER      FROM scratch, the static dind-init (init/Dockerfile)
#   dind-operator:VER  FROM scratch, the static operator, non-root (operator/Dockerfile)
#   dind-daemon:test   stand-in for the project's daemon image (daemon/Dockerfile: docker:<ver>-dind
#   dind-daemon:VER    with dind-init at /usr/local/bin/dind-init), with docker:<ver>-dind's engine:
#                      dockerd and docker-proxy of DEFAULT_DOCKER_VERSION and the containerd and
#                      runc that release pins (tests/engine/build.sh, from Go modules), and this
#                      machine's iptables, tini (docker-init) and docker CLI; the chart's default
#                      daemon image is dind-daemon:VER
#   dind-busybox:test  busybox + docker CLI: the base of test builds and of build pods
#   dind-client:test   busybox + today's clients (Docker CLI v29, buildx, compose, a Testcontainers
#                      test) from tests/clients/build.sh: what build pods run
#   moby/buildkit:buildx-stable-1  BuildKit (tests/clients/tools/buildkit) with the engine's runc,
#                      the image buildx's docker-container driver runs; node.sh pushes it
#   testcontainers/ryuk:VER  the Ryuk stand-in (tests/clients/tools/reaper), named as
#                      Testcontainers-go runs it; node.sh pushes it to the harness registry
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
load_containerd=false
[[ ${1:-} == --containerd ]] && load_containerd=true
version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)"
log() { echo ">> [images $(date +%T)] $*" >&2; }
work="$(mktemp -d)"
# The image buildx's docker-container driver runs unless told otherwise (buildx's default).
buildkit_image=moby/buildkit:buildx-stable-1
trap 'rm -rf "$work"' EXIT
tags=("dind-init:$version" "dind-operator:$version" dind-daemon:test "dind-daemon:$version" dind-busybox:test
      dind-client:test dind-pause:test)
# What the tags point at now: what this build replaces.
replaced="$(docker image inspect -f '{{.Id}}' "${tags[@]}" 2>/dev/null | sort -u || true)"

# Static binaries as the release builds them (glibc static-pie, crates recorded for the SBOM;
# the machines have no musl Rust target): scripts/release.sh binaries, into dist/bin/amd64/.
log "building static dind-init (release) and dind-operator (operator-image): scripts/release.sh binaries"
RELEASE_PLATFORMS=linux/amd64 scripts/release.sh binaries
bin="dist/bin/amd64"
operator_bin="dist/bin/amd64"

# The shared libraries (and loader) a binary needs; nothing for a static one.
libs_of() { { ldd "$1" 2>/dev/null || true; } | awk '/=>/ {print $3} /ld-linux/ {print $1}' | { grep '^/' || true; }; }

# Copies a binary and the shared libraries it needs into a root filesystem.
add_libs() { # add_libs <rootfs> <binary>
  local lib
  for lib in $(libs_of "$2"); do
    [[ -e "$1$lib" ]] || install -D -m 0755 "$(readlink -f "$lib")" "$1$lib"
  done
}
add_binary() { # add_binary <rootfs> <source> [dest]
  install -D -m 0755 "$2" "$1${3:-$2}"
  add_libs "$1" "$2"
}

docker_build() { # docker_build <tag> <context dir> <dockerfile>: the context holds ARCH/binary
  local args=(-t "$1" -f "$3" --build-arg TARGETARCH=amd64 "$2")
  DOCKER_BUILDKIT=0 docker build -q "${args[@]}" >/dev/null 2>&1 || DOCKER_BUILDKIT=0 docker build "${args[@]}"
  log "built $1"
}

# dind-init and dind-operator: FROM scratch images from their Dockerfiles (the release's, whose
# context holds a directory per architecture; the classic builder is told TARGETARCH).
mkdir -p "$work/init/amd64" "$work/operator/amd64"
cp "$bin/dind-init" "$work/init/amd64/dind-init"
cp "$operator_bin/dind-operator" "$work/operator/amd64/dind-operator"
docker_build "dind-init:$version" "$work/init" init/Dockerfile
docker_build "dind-operator:$version" "$work/operator" operator/Dockerfile

# busybox + docker CLI.
bb="$work/busybox"
add_binary "$bb" /bin/busybox /bin/busybox
for applet in sh ash echo cat ls sleep ps grep sed wc mkdir rm touch true false env id date head tail pidof kill mount umount hostname cut tr \
  wget nc seq tar timeout printf; do
  ln -sf busybox "$bb/bin/$applet"
done
add_binary "$bb" /usr/bin/docker /usr/bin/docker
mkdir -p "$bb"/{etc,tmp,root,proc,sys,dev,run}
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$bb/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$bb/etc/group"
tar -C "$bb" -c . | docker import -c 'ENV PATH=/usr/local/bin:/usr/bin:/bin' -c 'CMD ["/bin/sh"]' - dind-busybox:test >/dev/null
log "built dind-busybox:test"
# busybox + today's Docker clients, built from the Go module proxy (cached).
clients="$(tests/clients/build.sh | tail -n 1)"
c="$work/client"
cp -a "$bb" "$c"
rm -f "$c/usr/bin/docker"
install -D -m 0755 "$clients/docker" "$c/usr/local/bin/docker"
install -D -m 0755 "$clients/docker-buildx" "$c/usr/local/lib/docker/cli-plugins/docker-buildx"
install -D -m 0755 "$clients/docker-compose" "$c/usr/local/lib/docker/cli-plugins/docker-compose"
install -D -m 0755 "$clients/sdk.test" "$c/usr/local/bin/sdk.test"
tar -C "$c" -c . | docker import -c 'ENV PATH=/usr/local/bin:/usr/bin:/bin' -c 'CMD ["/bin/sh"]' - dind-client:test >/dev/null
log "built dind-client:test"
# BuildKit as the image the buildx docker-container driver runs by default (pushed to the
# harness registry, pulled through the mirror as users pull it from a Hub mirror): buildkitd,
# buildctl, and the engine's runc as buildkit-runc, laid out like moby/buildkit's image.
k="$work/buildkit"
engine="$(tests/engine/build.sh | tail -n 1)"
install -D -m 0755 "$clients/buildkitd" "$k/usr/bin/buildkitd"
install -D -m 0755 "$clients/buildctl" "$k/usr/bin/buildctl"
install -D -m 0755 "$engine/runc" "$k/usr/bin/buildkit-runc"
mkdir -p "$k/tmp" "$k/etc/buildkit" "$k/var/lib/buildkit"
chmod 1777 "$k/tmp"
replaced="$replaced $(docker image inspect -f '{{.Id}}' "$buildkit_image" 2>/dev/null || true)"
tar -C "$k" -c . | docker import -c 'ENTRYPOINT ["buildkitd"]' -c 'ENV PATH=/usr/bin:/bin' -c 'VOLUME /var/lib/buildkit' - "$buildkit_image" >/dev/null
log "built $buildkit_image (BuildKit for buildx's docker-container driver)"
# Testcontainers' reaper, as the image name Testcontainers runs (pushed to the harness registry,
# pulled through the mirror as a user's daemon pulls it from a Hub mirror).
ryuk_image="$(cat "$clients/ryuk-image")"
r="$work/ryuk"
install -D -m 0755 "$clients/ryuk" "$r/ryuk"
replaced="$replaced $(docker image inspect -f '{{.Id}}' "$ryuk_image" 2>/dev/null || true)"
tar -C "$r" -c . | docker import -c 'ENTRYPOINT ["/ryuk"]' -c 'EXPOSE 8080' - "$ryuk_image" >/dev/null
log "built $ryuk_image (the Ryuk stand-in)"
# The node's sandbox ("pause") image: a shell that sleeps until TERM.
tar -C "$bb" -c . | docker import \
  -c 'CMD ["/bin/sh", "-c", "trap \"exit 0\" TERM INT; while :; do sleep 3600 & wait $!; done"]' - dind-pause:test >/dev/null
log "built dind-pause:test"

# The stand-in daemon image: what docker:<ver>-dind holds, its engine built from Go modules
# (where docker:<ver>-dind has them: /usr/local/bin).
engine="$(tests/engine/build.sh | tail -n 1)"
d="$work/daemon"
cp -a "$bb" "$d"
for b in dockerd docker-proxy containerd containerd-shim-runc-v2 runc; do
  install -D -m 0755 "$engine/$b" "$d/usr/local/bin/$b"
done
for b in /usr/sbin/xtables-nft-multi /usr/sbin/xtables-legacy-multi; do
  add_binary "$d" "$b"
done
[[ -e /usr/bin/docker-init ]] && add_binary "$d" "$(readlink -f /usr/bin/docker-init)" /usr/bin/docker-init
for v in nft legacy; do
  for t in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
    ln -sf "xtables-$v-multi" "$d/usr/sbin/$t-$v"
  done
done
# Plain `iptables` defaults to nft; dind-init re-points it when the kernel needs legacy.
for t in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
  ln -sf "$t-nft" "$d/usr/sbin/$t"
done
mkdir -p "$d/usr/lib/x86_64-linux-gnu" "$d/usr/local/bin" "$d/var/lib/docker" "$d/var/log" "$d/etc/docker"
cp -a /usr/lib/x86_64-linux-gnu/xtables "$d/usr/lib/x86_64-linux-gnu/"
for lib in /usr/lib/x86_64-linux-gnu/xtables/*.so; do add_libs "$d" "$lib"; done
ln -sf ../run "$d/var/run"
printf 'root:x:0:\ndocker:x:999:\nnogroup:x:65534:\n' >"$d/etc/group"
install -m 0755 "$bin/dind-init" "$d/usr/local/bin/dind-init"
# Test helper: a dockerd that leaves an orphan behind, for dind-init's reaping test.
printf '#!/bin/sh\n(sleep 2 &)\nexec dockerd "$@"\n' >"$d/usr/local/bin/dockerd-with-orphan"
chmod 0755 "$d/usr/local/bin/dockerd-with-orphan"
tar -C "$d" -c . | docker import \
  -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  -c 'ENTRYPOINT ["/usr/local/bin/dind-init"]' \
  -c 'EXPOSE 2376' - dind-daemon:test >/dev/null
# The project's image is the same filesystem with a config of its own (a label), so that the two
# have different image IDs: containerd 2's CRI image store keeps one reference per ID, and once
# the kubelet had pulled REGISTRY/dind-daemon:VER it no longer found the imported
# dind-daemon:test (ErrImagePull "docker.io/library/dind-daemon:test"), in a node whose
# containerd starts empty.
printf 'FROM dind-daemon:test\nLABEL dev.dind.image=dind-daemon\n' | docker build -q -t "dind-daemon:$version" - >/dev/null
log "built dind-daemon:test (and :$version)"

# The images this build replaced, unless another tag still names them (left, they filled the
# test dockerd's disk until the node's kubelet tainted it with disk pressure).
removed=0
for id in $replaced; do
  if [[ -z "$(docker image inspect -f '{{join .RepoTags ""}}' "$id" 2>/dev/null)" ]] && docker rmi "$id" >/dev/null 2>&1; then
    removed=$((removed + 1))
  fi
done
log "removed $removed image(s) this build replaced"

if $load_containerd; then
  # One archive: the daemon image's two tags share their layers.
  docker save "${tags[@]}" | ctr -n k8s.io images import --all-platforms - >/dev/null
  log "loaded into containerd (k8s.io)"
fi
echo "dind-init:$version dind-operator:$version dind-daemon:test dind-daemon:$version dind-busybox:test dind-client:test"
