#!/usr/bin/env bash
# The test cluster's node: containerd 2 (CRI, with runc; both built from Go modules by
# tests/engine/build.sh, as clusters run them), CNI bridge networking, kubelet,
# kube-proxy and CoreDNS, joined to the control plane of cluster.sh. cluster.sh runs it
# (`up` after the control plane, `down` before it); it is not meant to be run alone.
#
# Everything lives under $state/node, /var/lib/dind-node and /run/dind-node; `down` removes
# every process, mount, network namespace, link and iptables chain it made.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
state="${DIND_CLUSTER_DIR:-/tmp/dind-operator-cluster}"
log_tag=node
# shellcheck source=tests/cluster/lib.sh
source "$here/lib.sh"

node=dind-node
node_ip="${DIND_CLUSTER_IP:-10.251.0.1}"
pod_cidr=10.244.0.0/24
cni_bridge=dindcni0
lib=/var/lib/dind-node
run=/run/dind-node
sock="$run/containerd.sock"
export CONTAINERD_ADDRESS="$sock" CONTAINERD_NAMESPACE=k8s.io
# containerd 2, its shim, runc and ctr (tests/engine/build.sh; cluster.sh records where).
if [[ -f $state/engine ]]; then
  engine="$(cat "$state/engine")"
  export PATH="$engine/node:$PATH"
fi

containerd_config() {
  mkdir -p "$state/node/cni" "$lib" "$run"
  # firewall: accepts pod traffic in FORWARD, where a dockerd on the same machine sets DROP.
  cat >"$state/node/cni/10-dind.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "dind-test",
  "plugins": [
    {"type": "bridge", "bridge": "$cni_bridge", "isGateway": true, "ipMasq": true, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$pod_cidr"}]], "routes": [{"dst": "0.0.0.0/0"}],
              "dataDir": "$lib/cni-ipam"}},
    {"type": "portmap", "capabilities": {"portMappings": true}},
    {"type": "firewall", "backend": "iptables"}
  ]
}
EOF
  # The harness registry and its mirror (tests/registry/registry.sh): their CA is trusted
  # (certs.d layout: HOST:PORT/hosts.toml), and the kubelet pulls with the node's credentials
  # (a config.json in its root directory, as nodes with registry credentials have).
  mkdir -p "$state/node/certs.d" "$lib/kubelet"
  local r
  for r in "$state/registry/host" "$state/registry/mirror"; do
    [[ -f $r ]] || continue
    mkdir -p "$state/node/certs.d/$(cat "$r")"
    printf 'server = "https://%s"\n[host."https://%s"]\n  capabilities = ["pull", "resolve"]\n  ca = "%s"\n' \
      "$(cat "$r")" "$(cat "$r")" "$state/registry/ca.crt" >"$state/node/certs.d/$(cat "$r")/hosts.toml"
  done
  if [[ -f $state/registry/docker-config/config.json ]]; then
    cp "$state/registry/docker-config/config.json" "$lib/kubelet/config.json"
  fi
  cat >"$state/node/containerd.toml" <<EOF
version = 3
root = "$lib/containerd"
state = "$run/containerd"
[grpc]
  address = "$sock"
[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'overlayfs'
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = 'dind-pause:test'
  [plugins.'io.containerd.cri.v1.images'.registry]
    config_path = '$state/node/certs.d'
[plugins.'io.containerd.cri.v1.runtime']
  enable_unprivileged_ports = true
  # kubelet asks for oom_score_adj -998 for sandboxes; lowering it needs CAP_SYS_RESOURCE,
  # which these VMs' bounding set lacks (runc init then dies: "can't get final child's PID").
  restrict_oom_score_adj = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = 'runc'
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = 'io.containerd.runc.v2'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = '$engine/runc'
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ['/usr/lib/cni']
    conf_dir = '$state/node/cni'
EOF
}

node_certs() {
  issue_cert node "/O=system:nodes/CN=system:node:$node"
  issue_cert kubelet-serving "/CN=$node" "IP:$node_ip,DNS:$node,DNS:localhost"
  issue_cert kube-proxy "/CN=system:kube-proxy"
  local server="https://$node_ip:6443"
  write_kubeconfig "$state/node/kubelet.kubeconfig" node "$server"
  write_kubeconfig "$state/node/kube-proxy.kubeconfig" kube-proxy "$server"
}

kubelet_config() {
  cat >"$state/node/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# These machines run cgroup v1; Kubernetes 1.35 refuses it unless told otherwise.
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$sock
address: $node_ip
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: $state/pki/kubelet-serving.crt
tlsPrivateKeyFile: $state/pki/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $state/pki/ca.crt}
authorization: {mode: Webhook}
clusterDomain: cluster.local
clusterDNS: [$node_ip]
resolvConf: $state/node/resolv.conf
failSwapOn: false
# No image registry here: images are loaded by hand, so image GC must never delete them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {"nodefs.available": "1%", "imagefs.available": "1%", "memory.available": "100Mi"}
serializeImagePulls: false
podPidsLimit: -1
maxPods: 60
EOF
  # Pods get cluster DNS only; the node itself has no upstream resolver to offer them.
  : >"$state/node/resolv.conf"
}

coredns_config() {
  cat >"$state/node/Corefile" <<EOF
cluster.local:53 in-addr.arpa:53 {
    bind $node_ip
    errors
    kubernetes cluster.local in-addr.arpa {
        kubeconfig $state/kubeconfig dind-test
        pods insecure
    }
}
EOF
}

proxy_config() {
  cat >"$state/node/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
hostnameOverride: $node
bindAddress: $node_ip
clusterCIDR: 10.244.0.0/16
clientConnection: {kubeconfig: $state/node/kube-proxy.kubeconfig}
# Same-bridge pods reach each other through a Service only if replies come back via the node.
iptables: {masqueradeAll: true}
# A VM may not let us raise nf_conntrack_max; the default is plenty for tests.
conntrack: {maxPerCore: 0}
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
EOF
}

cluster_objects() {
  local kubectl=("$bin/kubectl" --kubeconfig "$state/kubeconfig")
  "${kubectl[@]}" apply -f - >/dev/null <<EOF
# Dynamic hostPath volumes (kube-controller-manager --enable-hostpath-provisioner), the default class.
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: standard
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: kubernetes.io/host-path
reclaimPolicy: Delete
volumeBindingMode: Immediate
---
# CoreDNS runs on the node, not as a pod; this Service gives it the usual name.
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system}
spec:
  clusterIP: None
  ports: [{name: dns, port: 53, protocol: UDP}]
EOF
}

up() {
  local t0=$SECONDS
  bin="$(cat "$state/bin")"
  mkdir -p "$state/node"
  engine="$(cat "$state/engine")"
  containerd_config
  node_certs
  kubelet_config
  coredns_config
  proxy_config

  log "starting containerd"
  start containerd "$engine/node/containerd" --config "$state/node/containerd.toml"
  wait_for containerd 60 ctr version
  touch "$state/node.up"

  log "loading test images into containerd, pushing the project's to the registry"
  "$here/../images/build.sh" --containerd >/dev/null
  local version
  version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$here/../../Cargo.toml" | head -n1)"
  "$here/../registry/registry.sh" push "dind-operator:$version" "dind-init:$version" "dind-daemon:$version" moby/buildkit:buildx-stable-1 \
    "$(cat "$("$here/../clients/build.sh" | tail -n 1)/ryuk-image")"

  log "starting kubelet, kube-proxy and CoreDNS"
  start kubelet "$bin/kubelet" --config "$state/node/kubelet.yaml" --kubeconfig "$state/node/kubelet.kubeconfig" \
    --hostname-override "$node" --node-ip "$node_ip" --root-dir "$lib/kubelet" --cert-dir "$lib/kubelet/pki" --v=1
  start kube-proxy "$bin/kube-proxy" --config "$state/node/kube-proxy.yaml" --v=1
  start coredns "$bin/coredns" -conf "$state/node/Corefile" -dns.port 53
  wait_for "node Ready" 120 sh -c "'$bin/kubectl' --kubeconfig '$state/kubeconfig' get node $node -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True"
  cluster_objects
  log "node up in $((SECONDS - t0))s"
}

# Removes what containerd, the CNI plugins, kubelet and kube-proxy left: containers, mounts,
# network namespaces, links and iptables chains. Safe to run when nothing is there.
cleanup() {
  if [[ -S $sock ]]; then
    local ids
    ids="$(ctr tasks ls -q 2>/dev/null || true)"
    for id in $ids; do ctr tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true; done
    for _ in $(seq 50); do [[ -z "$(ctr tasks ls -q 2>/dev/null)" ]] && break; sleep 0.1; done
    for id in $ids; do ctr tasks rm -f "$id" >/dev/null 2>&1 || true; done
  fi
  stop_pid containerd
  # Shims outlive containerd; ours are the ones whose socket or bundle lives under $run.
  # (Matched on the command line: the kernel keeps 15 characters of a process name, and
  # `pgrep -x containerd-shim-runc-v2` matched none, so shims were left running.)
  for pid in $(pgrep -f -- "containerd-shim-runc-v2 .*-address $sock" 2>/dev/null || true); do
    if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "-address $sock"; then kill -KILL "$pid" 2>/dev/null || true; fi
  done
  # Mounts under our directories, deepest first.
  for m in $(awk '{print $5}' /proc/self/mountinfo | grep -E "^($lib|$run|/run/netns/cni-)" | sort -r); do
    umount -l "$m" 2>/dev/null || true
  done
  for ns in /run/netns/cni-*; do [[ -e $ns ]] && { umount -l "$ns" 2>/dev/null || true; rm -f "$ns"; }; done
  # The CNI plugins make /run/netns a mount of its own; undo it once no namespace is left.
  if mountpoint -q /run/netns && [[ -z "$(ls -A /run/netns)" ]]; then umount /run/netns 2>/dev/null || true; fi
  ip link show "$cni_bridge" >/dev/null 2>&1 && ip link del "$cni_bridge"
  if [[ -f $state/bin ]] && [[ -x "$(cat "$state/bin")/kube-proxy" ]]; then
    "$(cat "$state/bin")/kube-proxy" --cleanup >/dev/null 2>&1 || true
  fi
  # The CNI plugins' NAT chains (bridge ipMasq, portmap), in both iptables backends.
  for ipt in iptables iptables-legacy; do
    command -v "$ipt" >/dev/null || continue
    for table in nat filter; do
      # (`|| true`: grep finds no rule in a clean table, and under pipefail that ended the whole
      # cleanup here, before the rm -rf below: the node's containerd content, 13 GiB of it,
      # outlived every `down`, and with it images the kubelet pulled by tag, IfNotPresent.)
      "$ipt" -t "$table" -S 2>/dev/null | grep -E '^-A .*(CNI-|KUBE-)' | sed 's/^-A/-D/' | while read -r rule; do
        eval "$ipt -t $table $rule" 2>/dev/null || true
      done || true
      for chain in $("$ipt" -t "$table" -S 2>/dev/null | awk '/^-N (CNI-|KUBE-)/ {print $2}'); do
        "$ipt" -t "$table" -F "$chain" 2>/dev/null || true
        "$ipt" -t "$table" -X "$chain" 2>/dev/null || true
      done
    done
  done
  rm -rf "$lib" "$run" "$state/node.up"
}

down() {
  stop_pid coredns
  stop_pid kube-proxy
  stop_pid kubelet
  cleanup
  log "stopped"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  cleanup) cleanup ;;
  *) echo "usage: $0 up|down|cleanup" >&2; exit 2 ;;
esac
