#!/bin/sh
# The lane's run inside the cgroup v2 guest (tests/vm/lane.sh puts it on the run disk; the guest's
# init runs it). Kernel command line:
#   lane.modes="bare privileged"   containers to start, one after another (each started, timed to
#                                  its first /_ping, the last one kept running for the host test)
#   lane.mtu=N                     the guest NIC's MTU (as an overlay network gives a pod)
#   lane.nft=1                     no legacy iptables: ip_tables and friends cannot be loaded
# Prints `LANE ...` lines on the serial console; `LANE-READY` when the host may begin.
set -u
t() { echo "LANE t=$(cut -d' ' -f1 /proc/uptime) $*"; }
arg() { tr ' ' '\n' </proc/cmdline | sed -n "s/^$1=//p" | tr -d '"' | tr ',' ' '; }
modes="$(arg lane.modes)"
mtu="$(arg lane.mtu)"
nft="$(arg lane.nft)"
echo lane-guest >/proc/sys/kernel/hostname
t "cgroup: $(stat -fc %T /sys/fs/cgroup) controllers=$(cat /sys/fs/cgroup/cgroup.controllers)"

ip link set lo up
ip link set eth0 up
[ -n "$mtu" ] && ip link set eth0 mtu "$mtu"
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
echo "nameserver 10.0.2.3" >/etc/resolv.conf

if [ "$nft" = 1 ]; then
  # A kernel without the legacy tables (as kernel 6.18's common configs): modprobe refuses them.
  for m in ip_tables ip6_tables iptable_nat iptable_filter iptable_mangle iptable_raw ip6table_nat ip6table_filter; do
    echo "install $m /bin/false"
  done >/etc/modprobe.d/lane-nft-only.conf
fi
for m in overlay br_netfilter veth bridge nf_tables nft_chain_nat nft_compat nf_nat nf_conntrack \
  xt_MASQUERADE xt_addrtype xt_conntrack iptable_nat iptable_filter ip6table_nat ip6table_filter; do
  modprobe "$m" 2>/dev/null || true
done
t "modules: $(lsmod | awk 'NR>1 {print $1}' | grep -cE '^(ip_tables|iptable_)') legacy iptables modules loaded"

# The pod's cgroup: a slice with every controller, under which runc makes the container's own.
echo "+cpu +memory +pids +io" >/sys/fs/cgroup/cgroup.subtree_control
mkdir -p /sys/fs/cgroup/lane.slice
echo "+cpu +memory +pids +io" >/sys/fs/cgroup/lane.slice/cgroup.subtree_control

cd /lane/bundle || exit 1
# The first start must not pay for reading the engine's binaries from disk alone.
cat /lane/runc /lane/bundle/rootfs/usr/local/bin/* >/dev/null 2>&1
socket=/lane/bundle/rootfs/run/docker.sock
last=""
for mode in $modes; do
  if [ -n "$last" ]; then
    /lane/runc --root /run/runc kill "$last" KILL 2>/dev/null
    sleep 1
    /lane/runc --root /run/runc delete -f "$last" 2>/dev/null
    rm -f "$socket"
  fi
  cp "config-$mode.json" config.json
  start="$(cut -d' ' -f1 /proc/uptime)"
  /lane/runc --root /run/runc run -d --bundle /lane/bundle "$mode" >"/lane/daemon-$mode.log" 2>&1 </dev/null
  # Until dockerd answers, or the container has stopped (dind-init refused or crashed), or 300 s.
  up=no
  for _ in $(seq 150); do
    if /lane/bundle/rootfs/usr/local/bin/dind-init wait --socket "$socket" --timeout-ms 2000 >/dev/null 2>&1; then up=yes; break; fi
    /lane/runc --root /run/runc state "$mode" 2>/dev/null | grep -q '"status": "running"' || break
  done
  if [ "$up" = yes ]; then
    end="$(cut -d' ' -f1 /proc/uptime)"
    t "started mode=$mode start_to_ping_ms=$(awk -v a="$start" -v b="$end" 'BEGIN {printf "%d", (b - a) * 1000}')"
  else
    t "FAILED mode=$mode: no /_ping; $(/lane/runc --root /run/runc state "$mode" 2>&1 | grep -m1 status); its errors and last lines:"
    grep -iE "level=(error|fatal)|ERROR|panic" "/lane/daemon-$mode.log" | tail -n 20
    tail -n 8 "/lane/daemon-$mode.log"
  fi
  last=$mode
done
echo "LANE outer-cgroup=/lane.slice/$last"
echo LANE-READY
# The host test reads the nested containers' cgroups through the daemon; it stops QEMU when done.
while :; do sleep 3600; done
