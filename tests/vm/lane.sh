#!/usr/bin/env bash
# The cgroup v2 lane's run disk and boot (issue 23). The guest (tests/vm/build.sh, cached) mounts
# this disk at /lane and runs its run.sh. The disk holds what changes with the code: the daemon
# image's filesystem (dind-daemon:test, dind-init as its entrypoint), the engine's runc, the runc
# specs of each mode (spec.py), the daemon's server certificates and run.sh itself.
#
#   tests/vm/lane.sh prepare DIR CAPS      # DIR/run.img (CAPS: the operator's Capabilities list)
#   tests/vm/lane.sh boot DIR PORT WEB APPEND  # QEMU in the foreground: the guest's 2376 on
#                                          # 127.0.0.1:PORT, its 8080 on WEB, APPEND on its
#                                          # kernel command line
# The Rust test (tests/tests/vm.rs) drives both and stops QEMU (its own child) when done.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
log() { echo ">> [lane $(date +%T)] $*" >&2; }

prepare() {
  local dir=$1 caps=$2 d engine id
  d="$dir/disk"
  rm -rf "$d"
  mkdir -p "$d/bundle/rootfs" "$d/certs/server" "$d/data"/{privileged,capabilities,bare}
  engine="$("$here/../engine/build.sh" | tail -n 1)"
  install -m 0755 "$engine/runc" "$d/runc"
  id="$(docker create dind-daemon:test)"
  docker export "$id" | tar -C "$d/bundle/rootfs" -x
  docker rm "$id" >/dev/null
  # DIND_LANE_INIT: a dind-init binary (static) to run instead of the image's, to try a change
  # without rebuilding the images.
  if [[ -n ${DIND_LANE_INIT:-} ]]; then install -m 0755 "$DIND_LANE_INIT" "$d/bundle/rootfs/usr/local/bin/dind-init"; fi
  for mode in privileged capabilities bare; do
    python3 "$here/spec.py" "$mode" "/lane.slice/$mode" "$caps" >"$d/bundle/config-$mode.json"
  done
  cp "$dir/certs/server/"* "$d/certs/server/"
  install -m 0755 "$here/run.sh" "$d/run.sh"
  # Sparse: the daemons' data goes here too.
  mkfs.ext4 -q -F -L lanerun -d "$d" "$dir/run.img" 6G
  rm -rf "$d"
  log "run disk ready: $dir/run.img"
}

boot() {
  local dir=$1 port=$2 web=$3 append=$4 guest
  guest="$("$here/build.sh")"
  exec qemu-system-x86_64 -accel tcg,thread=multi -cpu max -m 3072 -smp 2 -display none -serial stdio -no-reboot \
    -kernel "$guest/vmlinuz" -initrd "$guest/initrd.gz" \
    -append "console=ttyS0 systemd.unified_cgroup_hierarchy=1 cgroup_no_v1=all panic=-1 $append" \
    -drive "file=$guest/rootfs.img,format=raw,if=virtio,snapshot=on" \
    -drive "file=$dir/run.img,format=raw,if=virtio,cache=unsafe" \
    -nic "user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:$port-:2376,hostfwd=tcp:127.0.0.1:$web-:8080"
}

case "${1:-}" in
  prepare) prepare "$2" "$3" ;;
  boot) boot "$2" "$3" "$4" "${5:-}" ;;
  *) echo "usage: $0 prepare DIR CAPS | boot DIR PORT WEBPORT [APPEND]" >&2; exit 2 ;;
esac
