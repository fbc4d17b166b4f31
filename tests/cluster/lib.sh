# Shared by cluster.sh and node.sh: logging, process start/stop by recorded pid, certificates.
# Expects $state (the harness's state directory).

log() { echo ">> [${log_tag:-cluster} $(date +%T)] $*" >&2; }

start() { # start <name> <binary> args...: detached, logs to $state/logs/<name>.log, pid recorded
  local name=$1; shift
  setsid "$@" >"$state/logs/$name.log" 2>&1 < /dev/null &
  echo $! >"$state/pids/$name"
  sleep 0.05
}

stop_pid() { # stop_pid <name>: TERM, up to 15 s, then KILL; only pids we recorded
  local f="$state/pids/$1" pid
  [[ -f $f ]] || return 0
  pid="$(cat "$f")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      log "$1 (pid $pid) did not stop on TERM; killing"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$f"
}

wait_for() { # wait_for <what> <seconds> <command...>
  local what=$1 limit=$2 t0=$SECONDS; shift 2
  until "$@" >/dev/null 2>&1; do
    if (( SECONDS - t0 > limit )); then
      log "$what not ready after ${limit}s; last log lines:"
      tail -n 30 "$state/logs/"*.log >&2 || true
      return 1
    fi
    sleep 0.2
  done
  log "$what ready after $((SECONDS - t0))s"
}

issue_cert() { # issue_cert <name> <subject> [serverSANs] [CA name]: an ECDSA P-256 leaf signed by $state/pki/ca (or the CA named)
  local d="$state/pki" name=$1 subj=$2 sans=${3:-} ca=${4:-ca}
  openssl ecparam -name prime256v1 -genkey -noout -out "$d/$name.key" 2>/dev/null
  openssl req -new -key "$d/$name.key" -subj "$subj" -out "$d/$name.csr" 2>/dev/null
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    if [[ -n $sans ]]; then echo "extendedKeyUsage=serverAuth,clientAuth"; echo "subjectAltName=$sans"
    else echo "extendedKeyUsage=clientAuth"; fi
  } >"$d/$name.ext"
  openssl x509 -req -in "$d/$name.csr" -CA "$d/$ca.crt" -CAkey "$d/$ca.key" -CAcreateserial \
    -days 30 -extfile "$d/$name.ext" -out "$d/$name.crt" 2>/dev/null
}

write_kubeconfig() { # write_kubeconfig <file> <cert name> <server url>
  local out=$1 who=$2 server=$3 d="$state/pki"
  cat >"$out" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: dind-test
  cluster:
    server: $server
    certificate-authority-data: $(base64 -w0 <"$d/ca.crt")
users:
- name: $who
  user:
    client-certificate-data: $(base64 -w0 <"$d/$who.crt")
    client-key-data: $(base64 -w0 <"$d/$who.key")
contexts:
- name: dind-test
  context: {cluster: dind-test, user: $who}
current-context: dind-test
KUBECONFIG
}
