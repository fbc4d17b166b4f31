#!/usr/bin/env bash
# The test cluster: a real etcd, kube-apiserver, kube-controller-manager and kube-scheduler on
# this machine, started from the binaries tests/cluster/build.sh makes.
#
#   tests/cluster/cluster.sh up      # build if needed, start, wait for /readyz, write kubeconfig;
#                                    # then the registry (tests/registry/registry.sh) and the
#                                    # node (tests/cluster/node.sh) unless DIND_NODE=0
#   tests/cluster/cluster.sh down    # stop every process it started, remove its state
#   tests/cluster/cluster.sh env     # print `export KUBECONFIG=...` lines for a shell
#
# State lives in $DIND_CLUSTER_DIR (default /tmp/dind-operator-cluster): pids, certificates,
# logs, and the admin kubeconfig at $DIND_CLUSTER_DIR/kubeconfig. `up` first clears whatever
# an interrupted run left, so a killed test run never blocks the next one.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
state="${DIND_CLUSTER_DIR:-/tmp/dind-operator-cluster}"
# The apiserver listens on a dummy (or port-less bridge) interface of ours: kubelet and pods need a non-loopback
# address, and a dummy interface keeps every packet on this machine.
link="${DIND_CLUSTER_LINK:-dindk8s0}"
ip_addr="${DIND_CLUSTER_IP:-10.251.0.1}"
port=6443
service_cidr=10.96.0.0/16
service_ip=10.96.0.1

log_tag=cluster
# shellcheck source=tests/cluster/lib.sh
source "$here/lib.sh"

down() {
  [[ -d $state ]] || return 0
  # The node first: its pods must go while containerd can still stop them.
  "$here/node.sh" down || true
  "$here/../registry/registry.sh" down || true
  # Then the control plane, in reverse start order.
  for name in $(ls -t "$state/pids" 2>/dev/null); do
    stop_pid "$name"
  done
  if ip link show "$link" >/dev/null 2>&1; then ip link del "$link"; fi
  rm -rf "$state"
  # The controller-manager's host-path provisioner keeps its volumes here; a volume retained
  # (or not yet deleted) when the cluster stops would stay on the disk for good.
  rm -rf /tmp/hostpath_pv
  log "stopped"
}

certs() {
  local d="$state/pki"
  mkdir -p "$d"
  openssl ecparam -name prime256v1 -genkey -noout -out "$d/ca.key" 2>/dev/null
  openssl req -x509 -new -key "$d/ca.key" -subj "/CN=dind-test-cluster-ca" -days 30 -out "$d/ca.crt" 2>/dev/null
  issue_cert apiserver "/CN=kube-apiserver" \
    "IP:$ip_addr,IP:$service_ip,IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  issue_cert admin "/O=system:masters/CN=dind-test-admin"
  issue_cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
  issue_cert controller-manager "/CN=system:kube-controller-manager"
  issue_cert scheduler "/CN=system:kube-scheduler"
  openssl ecparam -name prime256v1 -genkey -noout -out "$d/sa.key" 2>/dev/null
  openssl ec -in "$d/sa.key" -pubout -out "$d/sa.pub" 2>/dev/null
  # The apiserver's client certificate for admission webhooks, of a CA of its own (the chart's
  # webhook.clientAuth.caSecret trusts only it), as a platform team configures it:
  # --admission-control-config-file names a kubeconfig whose user `*` presents it to every webhook.
  openssl ecparam -name prime256v1 -genkey -noout -out "$d/webhook-client-ca.key" 2>/dev/null
  openssl req -x509 -new -key "$d/webhook-client-ca.key" -subj "/CN=dind-test-webhook-client-ca" -days 30 \
    -out "$d/webhook-client-ca.crt" 2>/dev/null
  issue_cert webhook-client "/CN=kube-apiserver-webhook-client" "" webhook-client-ca
  cat >"$state/webhook-client.kubeconfig" <<EOF
apiVersion: v1
kind: Config
users:
  - name: "*"
    user:
      client-certificate: $d/webhook-client.crt
      client-key: $d/webhook-client.key
EOF
  cat >"$state/admission.yaml" <<EOF
apiVersion: apiserver.config.k8s.io/v1
kind: AdmissionConfiguration
plugins:
  - name: MutatingAdmissionWebhook
    configuration:
      apiVersion: apiserver.config.k8s.io/v1
      kind: WebhookAdmissionConfiguration
      kubeConfigFile: $state/webhook-client.kubeconfig
  - name: ValidatingAdmissionWebhook
    configuration:
      apiVersion: apiserver.config.k8s.io/v1
      kind: WebhookAdmissionConfiguration
      kubeConfigFile: $state/webhook-client.kubeconfig
EOF
}

up() {
  local t0=$SECONDS bin
  down
  bin="$("$here/build.sh" | tail -n 1)"
  mkdir -p "$state"/{pids,logs,etcd}
  echo "$bin" >"$state/bin"
  # The node's containerd 2 and runc, and the registry (tests/engine/build.sh).
  "$here/../engine/build.sh" | tail -n 1 >"$state/engine"
  if ! ip link show "$link" >/dev/null 2>&1; then
    # A dummy link where the kernel has one; else a bridge without ports, which holds an
    # address just as well (some VM kernels are built without the dummy driver).
    ip link add "$link" type dummy 2>/dev/null || ip link add "$link" type bridge
    ip addr add "$ip_addr/32" dev "$link"
    ip link set "$link" up
  fi
  certs
  local server="https://$ip_addr:$port"
  write_kubeconfig "$state/kubeconfig" admin "$server"
  write_kubeconfig "$state/controller-manager.kubeconfig" controller-manager "$server"
  write_kubeconfig "$state/scheduler.kubeconfig" scheduler "$server"
  local pki="$state/pki"

  log "starting etcd"
  start etcd "$bin/etcd" --data-dir "$state/etcd" --name dind-test \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster dind-test=http://127.0.0.1:2380 --unsafe-no-fsync \
    --listen-metrics-urls http://127.0.0.1:2381 --log-level warn
  wait_for etcd 60 curl -fsS http://127.0.0.1:2381/health

  log "starting kube-apiserver"
  start kube-apiserver "$bin/kube-apiserver" \
    --etcd-servers http://127.0.0.1:2379 \
    --bind-address "$ip_addr" --advertise-address "$ip_addr" --secure-port "$port" \
    --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
    --client-ca-file "$pki/ca.crt" \
    --kubelet-client-certificate "$pki/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$pki/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types InternalIP,Hostname \
    --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --api-audiences https://kubernetes.default.svc.cluster.local \
    --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
    --admission-control-config-file "$state/admission.yaml" \
    --service-cluster-ip-range "$service_cidr" --allow-privileged=true \
    --cert-dir "$pki" --profiling=false --v=1
  wait_for kube-apiserver 120 curl -fsS --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" \
    "https://$ip_addr:$port/readyz"

  log "starting kube-controller-manager and kube-scheduler"
  start kube-controller-manager "$bin/kube-controller-manager" \
    --kubeconfig "$state/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$state/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$state/controller-manager.kubeconfig" \
    --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
    --cluster-signing-cert-file "$pki/ca.crt" --cluster-signing-key-file "$pki/ca.key" \
    --use-service-account-credentials=true --controllers '*' \
    --allocate-node-cidrs=true --cluster-cidr 10.244.0.0/16 --service-cluster-ip-range "$service_cidr" \
    --leader-elect=false --bind-address 127.0.0.1 --secure-port 10257 \
    --enable-hostpath-provisioner=true --concurrent-gc-syncs 5 --v=1
  start kube-scheduler "$bin/kube-scheduler" \
    --kubeconfig "$state/scheduler.kubeconfig" \
    --authentication-kubeconfig "$state/scheduler.kubeconfig" \
    --authorization-kubeconfig "$state/scheduler.kubeconfig" \
    --leader-elect=false --bind-address 127.0.0.1 --secure-port 10259 --v=1
  wait_for kube-controller-manager 60 curl -fsSk https://127.0.0.1:10257/healthz
  wait_for kube-scheduler 60 curl -fsSk https://127.0.0.1:10259/healthz
  # The default ServiceAccount appears once the controller-manager's token controller runs.
  wait_for "default ServiceAccount" 60 "$bin/kubectl" --kubeconfig "$state/kubeconfig" get serviceaccount default
  touch "$state/control-plane.up"
  log "control plane up in $((SECONDS - t0))s; KUBECONFIG=$state/kubeconfig"
  # The node (kubelet, containerd, CNI, kube-proxy, CoreDNS) unless DIND_NODE=0.
  if [[ ${DIND_NODE:-1} == 1 ]]; then
    [[ -n ${DOCKER_HOST:-} ]] || { log "the node loads images built by a Docker daemon: start tests/docker/dockerd.sh first"; return 1; }
    "$here/../registry/registry.sh" up >/dev/null
    "$here/node.sh" up
  fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  env)
    echo "export KUBECONFIG=$state/kubeconfig PATH=$(cat "$state/bin"):\$PATH"
    [[ -f $state/registry/host ]] && echo "export DIND_REGISTRY=$(cat "$state/registry/host")"
    ;;
  *) echo "usage: $0 up|down|env" >&2; exit 2 ;;
esac
