#!/usr/bin/env bash
# A Docker daemon for the tests, apart from any other on the machine: its own data root,
# exec root, socket, pid file and bridge. It is the engine the chart ships (dockerd
# DEFAULT_DOCKER_VERSION with its own containerd and runc, built by tests/engine/build.sh), not
# the machine's: images are built and dind-init's container tests run on what users run.
#
#   tests/docker/dockerd.sh up     # start; prints `export DOCKER_HOST=...`
#   tests/docker/dockerd.sh down   # stop it and every container it ran
set -euo pipefail

state="${DIND_DOCKERD_DIR:-/run/dind-test-dockerd}"
data="${DIND_DOCKERD_DATA:-/var/lib/dind-test-dockerd}"
sock="$state/docker.sock"
bridge=dindtest0
bridge_cidr=172.30.99.1/24
log() { echo ">> [dockerd $(date +%T)] $*" >&2; }

down() {
  if [[ -f $state/dockerd.pid ]]; then
    local pid; pid="$(cat "$state/dockerd.pid")"
    if kill -0 "$pid" 2>/dev/null; then
      # Containers first, so their volumes and mounts are released cleanly.
      DOCKER_HOST="unix://$sock" docker ps -aq 2>/dev/null | xargs -r env DOCKER_HOST="unix://$sock" docker rm -f >/dev/null 2>&1 || true
      kill -TERM "$pid"
      for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    fi
    rm -f "$state/dockerd.pid"
    log "stopped"
  fi
  if ip link show "$bridge" >/dev/null 2>&1; then ip link del "$bridge"; fi
}

up() {
  down
  mkdir -p "$state" "$data"
  if ! ip link show "$bridge" >/dev/null 2>&1; then
    ip link add "$bridge" type bridge
    ip addr add "$bridge_cidr" dev "$bridge"
    ip link set "$bridge" up
  fi
  local engine
  engine="$("$(dirname "${BASH_SOURCE[0]}")/../engine/build.sh" | tail -n1)"
  # dockerd starts its containerd, and containerd its shim and runc, from PATH.
  PATH="$engine:$PATH:/usr/local/sbin:/usr/sbin:/sbin" setsid "$engine/dockerd" --data-root "$data" --exec-root "$state/exec" --pidfile "$state/dockerd.pid.dockerd" \
    -H "unix://$sock" --bridge "$bridge" --storage-driver overlay2 --log-level warn \
    >"$state/dockerd.log" 2>&1 </dev/null &
  echo $! >"$state/dockerd.pid"
  for _ in $(seq 300); do
    DOCKER_HOST="unix://$sock" docker version >/dev/null 2>&1 && break
    kill -0 "$(cat "$state/dockerd.pid")" 2>/dev/null || { tail -20 "$state/dockerd.log" >&2; exit 1; }
    sleep 0.1
  done
  DOCKER_HOST="unix://$sock" docker version >/dev/null
  log "up at unix://$sock"
  echo "export DOCKER_HOST=unix://$sock"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
