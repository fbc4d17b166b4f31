#!/usr/bin/env bash
# The release, step by step: what .github/workflows/release.yml runs, and what a platform team
# runs to check a release before installing it. Every step reads and writes dist/.
#
#   scripts/release.sh binaries                 static dind-init and dind-operator per platform
#   scripts/release.sh images                   build and push the three images (tag + digest)
#   scripts/release.sh chart                    package the chart for those images, push it (oci://)
#   scripts/release.sh sign                     sign images and chart; attest an SPDX SBOM per image
#   scripts/release.sh verify [REGISTRY VERSION]  check signatures and SBOMs as a user would
#
# Environment (the workflow sets it from its inputs):
#   RELEASE_REGISTRY   where to push: HOST[:PORT]/PATH (images REGISTRY/dind-operator,
#                      REGISTRY/dind-init, REGISTRY/dind-daemon; chart oci://REGISTRY/charts)
#   RELEASE_VERSION    the version (default: the workspace's, Cargo.toml); tags are this
#   RELEASE_PLATFORMS  linux/amd64,linux/arm64 by default
#   RELEASE_DAEMON_BASE  the docker:<ver>-dind image the daemon image starts from (daemon/Dockerfile's
#                      default when empty)
#   COSIGN_PRIVATE_KEY, COSIGN_PASSWORD  sign with this key (cosign generate-key-pair); without
#                      one, keyless (Sigstore, the workflow's OIDC identity)
#   COSIGN_PUBLIC_KEY  verify: a file with the public key; without one, keyless, expecting
#                      RELEASE_IDENTITY (a regexp of the workflow's URL) and GitHub's OIDC issuer
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
dist="$root/dist"
images=(dind-operator dind-init dind-daemon)
crate_version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)"
version="${RELEASE_VERSION:-$crate_version}"
platforms="${RELEASE_PLATFORMS:-linux/amd64,linux/arm64}"
log() { echo ">> [release $(date +%T)] $*" >&2; }
die() { echo "release: $*" >&2; exit 1; }

registry() {
  [[ -n ${RELEASE_REGISTRY:-} ]] || die "RELEASE_REGISTRY is not set (HOST[:PORT]/PATH to push to)"
  echo "${RELEASE_REGISTRY%/}"
}

# The Rust target of a Docker platform's architecture.
rust_target() {
  case $1 in
    amd64) echo x86_64-unknown-linux-gnu ;;
    arm64) echo aarch64-unknown-linux-gnu ;;
    *) die "no Rust target for architecture $1 (RELEASE_PLATFORMS)" ;;
  esac
}
arches() { tr ',' '\n' <<<"$platforms" | sed 's#^linux/##'; }

# cargo-auditable (crates.io), cached outside the repo: it records each binary's crates in the
# binary (a .dep-v0 section), where syft finds them for the SBOM. Prints its directory.
cargo_auditable() {
  local version=0.7.7 dir
  dir="${DIND_CACHE_DIR:-$HOME/.cache/dind-operator}/cargo-auditable/$version"
  if [[ ! -x $dir/bin/cargo-auditable ]]; then
    log "installing cargo-auditable $version (once)"
    cargo install -q --locked --root "$dir" cargo-auditable --version "$version"
  fi
  echo "$dir/bin"
}

# Static binaries (glibc static-pie), as the images need them, with their crates recorded
# (cargo auditable): dind-init with the release profile (small: LTO, one codegen unit), the
# operator with operator-image (no LTO: a faster build). Copied to dist/bin/ARCH/.
# tests/images/build.sh builds the harness's images from the same.
binaries() {
  local arch target
  [[ $version == "$crate_version" ]] || die "version $version is not the workspace's ($crate_version, Cargo.toml)"
  PATH="$(cargo_auditable):$PATH"
  for arch in $(arches); do
    target="$(rust_target "$arch")"
    log "building dind-init and dind-operator for $arch ($target)"
    RUSTFLAGS="-C target-feature=+crt-static" cargo auditable build -q --locked --release --target "$target" -p dind-init --bin dind-init
    RUSTFLAGS="-C target-feature=+crt-static" cargo auditable build -q --locked --profile operator-image --target "$target" \
      -p dind-operator --bin dind-operator
    install -D -m 0755 "${CARGO_TARGET_DIR:-target}/$target/release/dind-init" "$dist/bin/$arch/dind-init"
    install -D -m 0755 "${CARGO_TARGET_DIR:-target}/$target/operator-image/dind-operator" "$dist/bin/$arch/dind-operator"
  done
}

# Builds and pushes one image for every platform; records REF@DIGEST in dist/images/NAME.
push_image() { # push_image <name> <dockerfile> <binary> [build-arg...]
  local name=$1 dockerfile=$2 binary=$3 reg ctx arch ref digest
  shift 3
  reg="$(registry)"
  ctx="$dist/context/$name"
  rm -rf "$ctx"
  for arch in $(arches); do
    [[ -x $dist/bin/$arch/$binary ]] || die "no dist/bin/$arch/$binary: run \`$0 binaries\` first"
    install -D -m 0755 "$dist/bin/$arch/$binary" "$ctx/$arch/$binary"
  done
  ref="$reg/$name:$version"
  log "building and pushing $ref ($platforms)"
  docker buildx build -q --platform "$platforms" -f "$dockerfile" "$@" \
    --label "org.opencontainers.image.version=$version" --label "org.opencontainers.image.source=${RELEASE_SOURCE:-}" \
    --provenance=false --metadata-file "$dist/images/$name.json" -t "$ref" --push "$ctx" >/dev/null
  digest="$(jq -r '."containerimage.digest"' "$dist/images/$name.json")"
  [[ $digest == sha256:* ]] || die "no digest for $ref in $dist/images/$name.json"
  echo "$reg/$name@$digest" >"$dist/images/$name"
  log "pushed $ref = $digest"
}

images() {
  mkdir -p "$dist/images"
  local base=()
  [[ -n ${RELEASE_DAEMON_BASE:-} ]] && base=(--build-arg "BASE=$RELEASE_DAEMON_BASE")
  push_image dind-operator operator/Dockerfile dind-operator
  push_image dind-init init/Dockerfile dind-init
  push_image dind-daemon daemon/Dockerfile dind-init "${base[@]}"
}

# The chart as released: its default images are the ones just pushed (image.repository; the
# daemon and dind-init images sit beside it), and Artifact Hub's image list names them.
chart() {
  local reg work out digest
  reg="$(registry)"
  work="$dist/chart"
  rm -rf "$work"
  mkdir -p "$work"
  cp -r charts/dind-operator "$work/"
  sed -i "0,/^  repository: dind-operator\$/s##  repository: $reg/dind-operator#" "$work/dind-operator/values.yaml"
  grep -q "^  repository: $reg/dind-operator\$" "$work/dind-operator/values.yaml" || die "values.yaml: image.repository not found"
  sed -i -E "s#^(      image: )(dind-[a-z]+):[^ ]+\$#\\1$reg/\\2:$version#" "$work/dind-operator/Chart.yaml"
  helm package "$work/dind-operator" --version "$version" --app-version "$version" -d "$work" >/dev/null
  log "pushing the chart to oci://$reg/charts"
  out="$(helm push "$work/dind-operator-$version.tgz" "oci://$reg/charts" 2>&1)" || { echo "$out" >&2; die "helm push failed"; }
  digest="$(sed -n 's/^Digest: \(sha256:[0-9a-f]*\)$/\1/p' <<<"$out")"
  [[ -n $digest ]] || { echo "$out" >&2; die "helm push printed no digest"; }
  mkdir -p "$dist/images"
  echo "$reg/charts/dind-operator@$digest" >"$dist/images/chart"
  log "pushed oci://$reg/charts/dind-operator:$version = $digest"
}

# What was pushed: REF@DIGEST per line (images, then the chart).
pushed() {
  local f
  for f in "${images[@]}" chart; do
    [[ -s $dist/images/$f ]] || die "dist/images/$f is missing: run the images and chart steps first"
    cat "$dist/images/$f"
  done
}

sign() {
  local key=() ref name
  if [[ -n ${COSIGN_PRIVATE_KEY:-} ]]; then
    # A key of the project's own, and no public transparency log or timestamp authority (a
    # private registry's release): a signing config without services.
    cosign signing-config create --out "$dist/signing-config.json" 2>/dev/null
    key=(--key env://COSIGN_PRIVATE_KEY --signing-config "$dist/signing-config.json")
    cosign public-key --key env://COSIGN_PRIVATE_KEY >"$dist/cosign.pub"
    log "signing with the key in COSIGN_PRIVATE_KEY (its public half: dist/cosign.pub)"
  else
    log "signing keyless (Sigstore: the workflow's OIDC identity, recorded in the transparency log)"
  fi
  for ref in $(pushed); do
    cosign sign -y "${key[@]}" "$ref" >/dev/null 2>"$dist/cosign.log" || { cat "$dist/cosign.log" >&2; die "cosign sign $ref"; }
    log "signed $ref"
  done
  mkdir -p "$dist/sbom"
  for name in "${images[@]}"; do
    ref="$(cat "$dist/images/$name")"
    syft scan -q "registry:$ref" -o "spdx-json=$dist/sbom/$name.spdx.json"
    cosign attest -y "${key[@]}" --type spdxjson --predicate "$dist/sbom/$name.spdx.json" "$ref" >/dev/null 2>"$dist/cosign.log" ||
      { cat "$dist/cosign.log" >&2; die "cosign attest $ref"; }
    log "attested the SBOM of $ref ($(jq '.packages | length' "$dist/sbom/$name.spdx.json") packages)"
  done
}

# Verification as a user does it before installing: by tag, each image and the chart signed by the
# release's key (or identity), each image with a signed SBOM.
verify() {
  local reg=${1:-} ver=${2:-$version} check=() name err
  [[ -n $reg ]] || reg="$(registry)"
  err="$(mktemp)"
  if [[ -n ${COSIGN_PUBLIC_KEY:-} ]]; then
    check=(--key "$COSIGN_PUBLIC_KEY" --insecure-ignore-tlog=true)
  else
    [[ -n ${RELEASE_IDENTITY:-} ]] || die "set COSIGN_PUBLIC_KEY (a key) or RELEASE_IDENTITY (keyless: a regexp of the workflow's URL)"
    check=(--certificate-identity-regexp "$RELEASE_IDENTITY" --certificate-oidc-issuer https://token.actions.githubusercontent.com)
  fi
  for name in "${images[@]}" charts/dind-operator; do
    cosign verify "${check[@]}" "$reg/$name:$ver" >/dev/null 2>"$err" || { cat "$err" >&2; die "$reg/$name:$ver: no valid signature"; }
    echo "verified: $reg/$name:$ver (signature)"
  done
  for name in "${images[@]}"; do
    cosign verify-attestation "${check[@]}" --type spdxjson "$reg/$name:$ver" >/dev/null 2>"$err" ||
      { cat "$err" >&2; die "$reg/$name:$ver: no valid SBOM attestation"; }
    echo "verified: $reg/$name:$ver (SPDX SBOM attestation)"
  done
  rm -f "$err"
}

case "${1:-}" in
  binaries) binaries ;;
  images) images ;;
  chart) chart ;;
  sign) sign ;;
  verify) shift; verify "$@" ;;
  *) echo "usage: $0 binaries|images|chart|sign|verify [REGISTRY VERSION]" >&2; exit 2 ;;
esac
