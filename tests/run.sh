#!/usr/bin/env bash
# Runs every test of the project, on this machine, against real parts:
#   rustfmt and clippy · unit tests · the CRD and RBAC generators' freshness · the real control plane
#   (etcd, kube-apiserver, controller-manager, scheduler) · dind-init in real containers
#   on a test dockerd · (with DIND_NODE=1, the default) a real node and the end-to-end path ·
#   the release workflow under act (tests/release/), the cgroup v2 lane (tests/vm/), and finally
#   the README's quickstart (scripts/quickstart.sh) on a fresh cluster.
# Everything it starts, it stops, also when a test fails or the run is interrupted.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
t0=$SECONDS
log() { echo ">> [run $(date +%T) +$((SECONDS - t0))s] $*" >&2; }

tests/setup-machine.sh

# Disk: a cold build of the workspace takes ~11 GiB, images and volumes ~3 GiB more, and the
# node's kubelet taints the node (every pod Pending) when its filesystem drops below 1% free.
free_gib=$(($(df --output=avail -k "$root" | tail -n1) / 1024 / 1024))
log "${free_gib} GiB free on the filesystem of $root"
if ((free_gib < 8)); then
  log "too little disk for a run (need ~16 GiB free, 8 at the least); free some and retry"
  exit 1
elif ((free_gib < 16)); then
  log "warning: less than 16 GiB free; a cold run may fill the disk and the node get tainted"
fi

cleanup() {
  local rc=$?
  log "stopping everything the run started"
  local pid
  for pid in ${go_pid:-} ${release_pid:-}; do
    if kill -0 "$pid" 2>/dev/null; then kill -- "-$pid" 2>/dev/null || true; fi
  done
  tests/cluster/cluster.sh down || true
  tests/docker/dockerd.sh down || true
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The Go builds (Kubernetes, today's Docker clients, the engine, node runtime and registry;
# cached in ~/.cache/dind-operator) download
# and compile while Rust is linted and built: on a cold machine they overlap instead of queueing.
log "building the Go tools in the background (cached)"
go_log="$(mktemp)"
# Its own process group (setsid), so that an interrupted run stops the go builds under it too.
setsid bash -c 'tests/cluster/build.sh && tests/clients/build.sh && tests/engine/build.sh' >"$go_log" 2>&1 &
go_pid=$!
wait_go() {
  if ! wait "$go_pid"; then
    cat "$go_log" >&2
    log "building the Go tools failed"
    exit 1
  fi
}

log "formatting (rustfmt.toml) and lints (clippy, warnings are errors)"
cargo fmt --check
cargo clippy -q --workspace --all-targets -- -D warnings

log "generated files are fresh (crds/, chart CRD and RBAC)"
cargo run -q -p dind-operator --bin crdgen -- --check

log "building the workspace"
cargo build -q --workspace --all-targets
# The images' static binaries (tests/images/build.sh takes them as built): on a cold machine
# this runs beside the Go builds, which take longer than all of the Rust.
log "building the images' static binaries (scripts/release.sh binaries)"
RELEASE_PLATFORMS=linux/amd64 scripts/release.sh binaries

log "waiting for the Go tools"
wait_go
# The release tools (act, cosign, syft, kubeconform and the Kubernetes schemas; cached) are
# needed from the release step on: they build while images are built, the cluster starts and the
# integration tests run, whose CPU is partly idle (on a cold machine, ~5 min no longer in line).
release_log="$(mktemp)"
setsid tests/release/build.sh >"$release_log" 2>&1 &
release_pid=$!
log "starting the test dockerd"
eval "$(tests/docker/dockerd.sh up)"
export DOCKER_HOST
log "building images"
tests/images/build.sh >/dev/null

log "building the Kubernetes binaries (cached) and starting the cluster"
tests/cluster/cluster.sh up
eval "$(tests/cluster/cluster.sh env)"
kubectl apply --server-side --force-conflicts -f crds/dinddaemon.yaml >/dev/null

log "running the tests"
rc=0
cargo test -q --workspace --no-fail-fast -- --skip e2e_ --skip vm_ --skip release:: --test-threads "${DIND_TEST_THREADS:-4}" || rc=$?
if ! wait "$release_pid"; then
  cat "$release_log" >&2
  log "building the release tools failed"
  exit 1
fi
if [[ ${DIND_NODE:-1} == 1 ]]; then
  # The release workflow, run by act, publishes this commit to the harness registry (signed,
  # with SBOMs); the release test checks it as users would; the end-to-end tests install it.
  log "running the release workflow (.github/workflows/release.yml) with act, and the release test"
  tests/release/run.sh
  export DIND_TEST_RELEASE=1
  cargo test -q -p dind-tests --test integration -- release:: || rc=$?
  # The end-to-end tests pause the apiserver in a drill: alone, one at a time, after the rest.
  log "running the end-to-end tests on the node"
  # Their figures (BENCH) and each test's time (TIME) go to the log; all of it on a failure.
  e2e_log="$(mktemp)"
  if cargo test -q -p dind-tests --test e2e --no-fail-fast -- --test-threads 1 --nocapture >"$e2e_log" 2>&1; then
    grep -oE '(TIME|BENCH) .*|test result.*' "$e2e_log" >&2 || true
  else
    cat "$e2e_log" >&2
    rc=1
  fi
  rm -f "$e2e_log"
fi
if ((rc)); then log "tests failed"; exit "$rc"; fi
# The cgroup v2 lane (tests/vm/): our daemon image under runc in a QEMU guest with a pure cgroup v2
# hierarchy (this machine is cgroup v1). Its guest is cached; where it cannot be built or QEMU
# cannot run, the lane says so and is skipped. Before the quickstart: it takes the test dockerd's
# images, and the quickstart stops that dockerd.
if [[ ${DIND_VM:-1} == 1 ]]; then
  if tests/vm/build.sh >/dev/null; then
    log "running the cgroup v2 lane (QEMU)"
    vm_log="$(mktemp)"
    if cargo test -q -p dind-tests --test vm -- --test-threads 1 --nocapture >"$vm_log" 2>&1; then
      grep -E "cgroup v2 lane|docker info|SKIPPED|test result" "$vm_log" >&2 || true
    else
      cat "$vm_log" >&2
      rc=1
    fi
    rm -f "$vm_log"
  else
    log "SKIPPED: the cgroup v2 lane: its guest could not be built (tests/vm/build.sh, above)"
  fi
  if ((rc)); then log "the cgroup v2 lane failed"; exit "$rc"; fi
fi
# The README's other command, the main job, end to end on a fresh cluster; it stops what it starts.
if [[ ${DIND_NODE:-1} == 1 ]]; then
  log "running the quickstart (scripts/quickstart.sh)"
  DIND_QUICKSTART_KEEP=0 scripts/quickstart.sh
fi
log "all tests passed"
