#!/usr/bin/env bash
# The main job, on the embedded default: builds what is needed, brings up the local real
# cluster of tests/ (etcd, kube-apiserver, controller-manager, scheduler, and a node with
# kubelet, containerd, CNI, kube-proxy, CoreDNS), installs the Helm chart, applies
# examples/dinddaemon.yaml, runs examples/build-pod.yaml (a pod with one label: the webhook
# injects Docker) and prints its output.
#
#   sudo scripts/quickstart.sh            # leaves the cluster running, says how to stop it
#   DIND_QUICKSTART_KEEP=0 scripts/quickstart.sh   # stops everything at the end (CI)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
t0=$SECONDS
step() { echo; echo "==> [$((SECONDS - t0))s] $*"; }
keep="${DIND_QUICKSTART_KEEP:-1}"
if [[ $keep == 0 ]]; then
  trap 'tests/cluster/cluster.sh down || true; tests/docker/dockerd.sh down || true' EXIT
fi

step "installing machine packages (once)"
tests/setup-machine.sh
step "starting a Docker daemon to build images with"
eval "$(tests/docker/dockerd.sh up)"
export DOCKER_HOST
step "building images: dind-operator, dind-init, dind-daemon (Docker Engine built from Go modules)"
tests/images/build.sh
step "starting the local cluster and its registry, pushing the images (first run builds Kubernetes from source: ~10-15 min)"
tests/cluster/cluster.sh up
eval "$(tests/cluster/cluster.sh env)"

step "helm install dind-operator (images pulled by tag from the registry at $DIND_REGISTRY)"
helm upgrade --install dind-operator charts/dind-operator -n dind-system --create-namespace \
  --set image.repository="$DIND_REGISTRY/dind-operator" --wait --timeout 180s

step "kubectl apply -f examples/dinddaemon.yaml"
kubectl apply -f examples/dinddaemon.yaml
kubectl wait --for=condition=Ready dind/ci --timeout=300s
kubectl get dind ci

step "running examples/build-pod.yaml: a pod with one label (with this machine's client image, Docker CLI v29)"
kubectl label namespace default dind.dev/injection=enabled --overwrite
kubectl delete pod build --ignore-not-found --wait >/dev/null
sed -e 's#image: docker:29-cli#image: dind-client:test\n      imagePullPolicy: Never#' examples/build-pod.yaml | kubectl apply -f -
for _ in $(seq 300); do
  phase="$(kubectl get pod build -o jsonpath='{.status.phase}')"
  [[ $phase == Succeeded || $phase == Failed ]] && break
  sleep 1
done
kubectl logs build
[[ $phase == Succeeded ]] || { echo "build pod: $phase" >&2; exit 1; }

step "done"
if [[ $keep == 1 ]]; then
  cat <<MSG
The cluster is still running. Use it with:
  $(tests/cluster/cluster.sh env)
  kubectl get dind
Stop everything with:
  tests/cluster/cluster.sh down && tests/docker/dockerd.sh down
MSG
fi
