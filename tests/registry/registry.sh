#!/usr/bin/env bash
# The harness's container registry: distribution v3 (tests/engine/build.sh) with TLS from a CA
# of its own (as a corporate registry has) and htpasswd auth, on the cluster's address; and a
# second instance in pull-through (proxy) mode that stands in for an upstream hub.
#
#   tests/registry/registry.sh up     # start both; prints `export DIND_REGISTRY=HOST:PORT`
#                                     # (the mirror asks no credentials: dockerd sends a mirror none)
#   tests/registry/registry.sh down   # stop both, remove their data and the trust it set up
#   tests/registry/registry.sh push IMAGE...   # push local images of $DOCKER_HOST to it
#
# What it leaves for the others, in $DIND_CLUSTER_DIR/registry/:
#   host, mirror        HOST:PORT of the registry and of the pull-through mirror
#   ca.crt              the registry CA (the node's containerd trusts it: node.sh)
#   user, password      the htpasswd credentials (random per run)
#   docker-config/      a Docker config.json logged in to it (pushes)
# and /etc/docker/certs.d/HOST:PORT/ca.crt, so the test dockerd (which pushes) trusts it too.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
state="${DIND_CLUSTER_DIR:-/tmp/dind-operator-cluster}"
dir="$state/registry"
ip_addr="${DIND_CLUSTER_IP:-10.251.0.1}"
port=5000
mirror_port=5001
host="$ip_addr:$port"
log() { echo ">> [registry $(date +%T)] $*" >&2; }

stop() { # stop <name>: by the pid we recorded
  local f="$dir/$1.pid" pid
  [[ -f $f ]] || return 0
  pid="$(cat "$f")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  fi
  rm -f "$f"
}

down() {
  stop mirror
  stop registry
  rm -rf "$dir" "/etc/docker/certs.d/$host" "/etc/docker/certs.d/$ip_addr:$mirror_port"
}

certs() {
  openssl ecparam -name prime256v1 -genkey -noout -out "$dir/ca.key" 2>/dev/null
  openssl req -x509 -new -key "$dir/ca.key" -subj "/CN=dind-test-registry-ca" -days 30 -out "$dir/ca.crt" 2>/dev/null
  openssl ecparam -name prime256v1 -genkey -noout -out "$dir/tls.key" 2>/dev/null
  openssl req -new -key "$dir/tls.key" -subj "/CN=$ip_addr" -out "$dir/tls.csr" 2>/dev/null
  printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:%s,DNS:localhost\n' \
    "$ip_addr" >"$dir/tls.ext"
  openssl x509 -req -in "$dir/tls.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial -days 30 \
    -extfile "$dir/tls.ext" -out "$dir/tls.crt" 2>/dev/null
}

config() { # config <name> <port> [proxy]: a registry's config.yml
  cat <<EOF
version: 0.1
log: {level: warn, accesslog: {disabled: false}}
storage:
  filesystem: {rootdirectory: $dir/$1-data}
  delete: {enabled: true}
http:
  addr: $ip_addr:$2
  tls: {certificate: $dir/tls.crt, key: $dir/tls.key}
  debug: {addr: 127.0.0.1:$(($2 + 100))}
EOF
  if [[ ${3:-} == proxy ]]; then
    # A pull-through cache of the first registry, open to its network as a hub mirror is
    # (dockerd sends a mirror no credentials of its own); it pulls upstream with the user's.
    printf 'proxy:\n  remoteurl: https://%s\n  username: %s\n  password: %s\n' "$host" "$(cat "$dir/user")" "$(cat "$dir/password")"
  else
    printf 'auth:\n  htpasswd: {realm: dind-test, path: %s}\n' "$dir/htpasswd"
  fi
}

wait_up() { # wait_up <name> <port>
  for _ in $(seq 100); do
    curl -fsS --cacert "$dir/ca.crt" -u "$(cat "$dir/user"):$(cat "$dir/password")" "https://$ip_addr:$2/v2/" >/dev/null 2>&1 && return 0
    kill -0 "$(cat "$dir/$1.pid")" 2>/dev/null || break
    sleep 0.1
  done
  log "$1 did not come up:"
  tail -n 20 "$dir/$1.log" >&2
  return 1
}

up() {
  down
  local engine
  engine="$("$here/../engine/build.sh" | tail -n 1)"
  mkdir -p "$dir"
  certs
  echo dind-ci >"$dir/user"
  openssl rand -hex 12 >"$dir/password"
  htpasswd -Bbn "$(cat "$dir/user")" "$(cat "$dir/password")" >"$dir/htpasswd" 2>/dev/null
  config registry "$port" >"$dir/registry.yml"
  config mirror "$mirror_port" proxy >"$dir/mirror.yml"
  # The proxy's client trusts the registry's CA through the system pool (SSL_CERT_FILE).
  setsid "$engine/registry" serve "$dir/registry.yml" >"$dir/registry.log" 2>&1 </dev/null &
  echo $! >"$dir/registry.pid"
  wait_up registry "$port"
  # The mirror asks its upstream at start: after the registry.
  SSL_CERT_FILE="$dir/ca.crt" setsid "$engine/registry" serve "$dir/mirror.yml" >"$dir/mirror.log" 2>&1 </dev/null &
  echo $! >"$dir/mirror.pid"
  wait_up mirror "$mirror_port"
  echo "$host" >"$dir/host"
  echo "$ip_addr:$mirror_port" >"$dir/mirror"
  # The test dockerd pushes: it reads registry CAs from /etc/docker/certs.d (no flag moves it).
  for h in "$host" "$ip_addr:$mirror_port"; do
    install -D -m 0644 "$dir/ca.crt" "/etc/docker/certs.d/$h/ca.crt"
  done
  mkdir -p "$dir/docker-config"
  local auth
  auth="$(printf '%s:%s' "$(cat "$dir/user")" "$(cat "$dir/password")" | base64 -w0)"
  printf '{"auths": {"%s": {"auth": "%s"}, "%s": {"auth": "%s"}}}\n' "$host" "$auth" "$ip_addr:$mirror_port" "$auth" \
    >"$dir/docker-config/config.json"
  log "registry at https://$host (mirror https://$ip_addr:$mirror_port), CA $dir/ca.crt, user $(cat "$dir/user")"
  echo "export DIND_REGISTRY=$host"
}

push() { # push IMAGE...: tags each as HOST:PORT/IMAGE and pushes it
  local image
  for image in "$@"; do
    docker tag "$image" "$host/$image"
    DOCKER_CONFIG="$dir/docker-config" docker push -q "$host/$image" >/dev/null
    docker rmi "$host/$image" >/dev/null
  done
  log "pushed $* to $host"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  push) shift; push "$@" ;;
  *) echo "usage: $0 up|down|push IMAGE..." >&2; exit 2 ;;
esac
