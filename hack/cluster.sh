#!/usr/bin/env bash
# The local Kubernetes control plane for Barge's demo, tests and benchmarks:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok on loopback.
#
#   hack/cluster.sh up [--no-real-node]
#                            build (cached) and start; a second `up` reuses the running cluster.
#                            Where the machine allows it (root, cgroups, Debian's containerd),
#                            one real node runs beside the kwok nodes (hack/cluster/real-node.sh)
#   hack/cluster.sh down     stop exactly the processes `up` started and remove the state
#   hack/cluster.sh status   say what runs
#   hack/cluster.sh leftovers  what a real node left on this machine, a line each (after down)
#   hack/cluster.sh env      print `export KUBECONFIG=…` lines (eval "$(hack/cluster.sh env)")
#   hack/cluster.sh stop-for COMPONENT SECONDS   stop one component, then start it again as
#                            `up` did and wait until it answers (for `make chaos`)
#   hack/cluster.sh pause-for COMPONENT SECONDS  SIGSTOP it, then SIGCONT (a hung process)
#
# Environment: BARGE_CLUSTER_DIR (state; default .barge/cluster in the repo),
# BARGE_CACHE (built binaries), KCM_QPS / KCM_BURST (controller-manager client limits),
# BARGE_MOTO=0 to skip the moto server, BARGE_REAL_NODE=0 to start no real node.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
state=${BARGE_CLUSTER_DIR:-$repo/.barge/cluster}
components=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok moto containerd kubelet moto-node barge)

log() { printf '[cluster] %s\n' "$*" >&2; }
# shellcheck source=cluster/real-node.sh
source "$repo/hack/cluster/real-node.sh"
# shellcheck source=cluster/versions.env
source "$repo/hack/cluster/versions.env"
die() { log "error: $*"; exit 1; }

alive() { # alive <component>: its recorded pid is running
  local f="$state/pids/$1"
  [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null
}

free_ports() {
  python3 -c 'import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))' "$1"
}

gen_certs() {
  local d="$state/pki"; mkdir -p "$d"; cd "$d"
  openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 \
    -subj "/CN=barge-local-ca" 2>/dev/null
  cat > san.cnf <<CNF
[req]
distinguished_name = dn
[dn]
[ext]
subjectAltName = IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc
extendedKeyUsage = serverAuth
[client]
basicConstraints = CA:FALSE
keyUsage = digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
CNF
  openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr \
    -subj "/CN=kube-apiserver" 2>/dev/null
  openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
    -extfile san.cnf -extensions ext -out apiserver.crt 2>/dev/null
  local who
  for who in admin:system:masters kube-controller-manager:system:masters kube-scheduler: kwok:system:masters \
      apiserver-kubelet-client:system:masters; do
    local name=${who%%:*} org=${who#*:} subj
    # The controller-manager runs every controller under one identity here (no per-controller
    # service accounts), so it gets the admin group, as kwokctl's binary runtime does.
    case $name in
      admin|kwok) subj="/O=$org/CN=barge-$name" ;;
      apiserver-kubelet-client) subj="/O=$org/CN=kube-$name" ;;
      kube-controller-manager) subj="/O=$org/CN=system:$name" ;;
      *) subj="/CN=system:$name" ;;
    esac
    openssl req -newkey rsa:2048 -nodes -keyout "$name.key" -out "$name.csr" -subj "$subj" 2>/dev/null
    openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile san.cnf -extensions client -out "$name.crt" 2>/dev/null
  done
  openssl genrsa -out sa.key 2048 2>/dev/null
  openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  cd - >/dev/null
}

write_kubeconfig() { # write_kubeconfig <user> <file>
  local pki="$state/pki"
  cat > "$2" <<KC
apiVersion: v1
kind: Config
clusters:
- name: barge-local
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority: $pki/ca.crt
users:
- name: $1
  user:
    client-certificate: $pki/$1.crt
    client-key: $pki/$1.key
contexts:
- name: barge-local
  context: {cluster: barge-local, user: $1}
current-context: barge-local
KC
}

start() { # start <component> <command…>: run in the background with its own log
  local name=$1; shift
  mkdir -p "$state/commands"
  printf '%q ' "$@" >"$state/commands/$name"
  "$@" >>"$state/logs/$name.log" 2>&1 &
  echo $! >"$state/pids/$name"
}

answers() { # answers <component>: its health endpoint says ok
  # shellcheck disable=SC1091
  source "$state/ports.env"
  local pki="$state/pki"
  case "$1" in
    etcd) curl -sf "http://127.0.0.1:$ETCD_PORT/health" ;;
    kube-apiserver) curl -sf --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" \
      "https://127.0.0.1:$APISERVER_PORT/readyz" ;;
    kwok) curl -sf "http://127.0.0.1:$KWOK_PORT/healthz" ;;
    *) alive "$1" ;;
  esac
}

stop_for() { # stop_for <component> <seconds>
  local c=$1 secs=$2 pid
  [ -f "$state/commands/$c" ] || die "$c was not started by up"
  pid=$(cat "$state/pids/$c")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  log "$c stopped for ${secs}s"
  sleep "$secs"
  eval "start $c $(cat "$state/commands/$c")"
  wait_for "$c" 120 answers "$c"
  log "$c answers again"
}

pause_for() { # pause_for <component> <seconds>
  local c=$1 secs=$2 pid
  pid=$(cat "$state/pids/$c")
  # shellcheck disable=SC2064 # the pid is meant to be expanded now
  trap "kill -CONT $pid 2>/dev/null || true" EXIT
  kill -STOP "$pid"
  log "$c paused for ${secs}s"
  sleep "$secs"
  kill -CONT "$pid"
  log "$c resumed"
}

check_alive() { # every component started so far still runs
  local f
  for f in "$state"/pids/*; do
    [ -e "$f" ] || continue
    alive "$(basename "$f")" || die "$(basename "$f") exited; last lines of its log:
$(tail -5 "$state/logs/$(basename "$f").log")"
  done
}

wait_for() { # wait_for <what> <seconds> <command…>
  local what=$1 secs=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || die "$what not ready after ${secs}s; see $state/logs/"
    check_alive
    sleep 0.3
  done
}

up() {
  if alive kube-apiserver; then
    log "already running (state in $state)"
    env_lines; return
  fi
  [ -d "$state" ] && down_quiet
  "$repo/hack/cluster/build.sh" all
  eval "$("$repo/hack/cluster/build.sh" paths)"
  mkdir -p "$state"/{pids,logs,etcd}
  # All seven at once, held open together so that no two are the same.
  read -r ETCD_PORT ETCD_PEER_PORT APISERVER_PORT KCM_PORT SCHED_PORT KWOK_PORT MOTO_PORT < <(free_ports 7)
  declare -p ETCD_PORT APISERVER_PORT MOTO_PORT KWOK_PORT | sed 's/^declare -- //' >"$state/ports.env"
  echo "BIN_DIR=$K8S_BIN" >>"$state/ports.env"
  echo "HELM_DIR=$HELM_BIN" >>"$state/ports.env"
  echo "AWS_CLIENTS_BIN=$AWS_CLIENTS_VENV/bin" >>"$state/ports.env"
  echo "MOTO_VENV=$MOTO_VENV" >>"$state/ports.env"
  echo "SNAKEMAKE_VENV=$SNAKEMAKE_VENV" >>"$state/ports.env"
  echo "METAFLOW_VENV=$METAFLOW_VENV" >>"$state/ports.env"
  echo "AIRFLOW_VENV=$AIRFLOW_VENV" >>"$state/ports.env"
  gen_certs
  local pki="$state/pki"
  write_kubeconfig admin "$state/kubeconfig"
  write_kubeconfig kube-controller-manager "$state/kcm.kubeconfig"
  write_kubeconfig kube-scheduler "$state/scheduler.kubeconfig"
  write_kubeconfig kwok "$state/kwok.kubeconfig"

  log "starting etcd on 127.0.0.1:$ETCD_PORT"
  start etcd "$ETCD_BIN/etcd" --name barge --data-dir "$state/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "barge=http://127.0.0.1:$ETCD_PEER_PORT" --unsafe-no-fsync --quota-backend-bytes=8589934592 \
    --log-level=warn
  wait_for etcd 30 curl -sf "http://127.0.0.1:$ETCD_PORT/health"

  log "starting kube-apiserver on https://127.0.0.1:$APISERVER_PORT"
  # --allow-privileged as kubeadm and EKS set it: whether a namespace may run privileged pods
  # (AWS Batch's `privileged`) is then Pod Security admission's call, as on those clusters.
  start kube-apiserver "$K8S_BIN/kube-apiserver" --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address 127.0.0.1 --secure-port "$APISERVER_PORT" --advertise-address 127.0.0.1 \
    --cert-dir "$pki" --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
    --client-ca-file "$pki/ca.crt" --service-account-issuer https://kubernetes.default.svc \
    --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
    --service-cluster-ip-range 10.0.0.0/24 --authorization-mode Node,RBAC \
    --endpoint-reconciler-type none --max-requests-inflight 1000 --max-mutating-requests-inflight 500 \
    --allow-privileged=true --v=1 \
    --kubelet-client-certificate "$pki/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$pki/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types InternalIP,Hostname
  wait_for kube-apiserver 90 curl -sf --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" \
    "https://127.0.0.1:$APISERVER_PORT/readyz"

  log "starting kube-controller-manager and kube-scheduler"
  start kube-controller-manager "$K8S_BIN/kube-controller-manager" --kubeconfig "$state/kcm.kubeconfig" \
    --authentication-kubeconfig "$state/kcm.kubeconfig" --authorization-kubeconfig "$state/kcm.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$KCM_PORT" --leader-elect=false \
    --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
    --use-service-account-credentials=false --controllers '*,-nodeipam' \
    --kube-api-qps "${KCM_QPS:-20}" --kube-api-burst "${KCM_BURST:-30}" --v=1
  start kube-scheduler "$K8S_BIN/kube-scheduler" --kubeconfig "$state/scheduler.kubeconfig" \
    --authentication-kubeconfig "$state/scheduler.kubeconfig" --authorization-kubeconfig "$state/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$SCHED_PORT" --leader-elect=false \
    --kube-api-qps "${SCHED_QPS:-200}" --kube-api-burst "${SCHED_BURST:-400}" --v=1

  log "starting kwok"
  start kwok "$KWOK_BIN/kwok" --kubeconfig "$state/kwok.kubeconfig" \
    --manage-all-nodes=false --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
    --config "$repo/hack/cluster/kwok.yaml" --config "$repo/hack/cluster/kwok-stages.yaml" --server-address "127.0.0.1:$KWOK_PORT" \
    --node-lease-duration-seconds=40 --cidr 10.128.0.1/9 --node-ip 10.127.0.1
  wait_for kwok 30 curl -sf "http://127.0.0.1:$KWOK_PORT/healthz"

  if [ "${BARGE_MOTO:-1}" != 0 ]; then
    log "starting moto (EC2 emulator) on 127.0.0.1:$MOTO_PORT"
    start moto "$MOTO_VENV/bin/moto_server" -H 127.0.0.1 -p "$MOTO_PORT"
    wait_for moto 60 curl -sf "http://127.0.0.1:$MOTO_PORT/moto-api/"
  fi
  export KUBECONFIG="$state/kubeconfig"
  wait_for "default service account" 60 "$K8S_BIN/kubectl" get serviceaccount default -n default
  start_real_node "$@"
  log "ready"
  env_lines
}

start_real_node() {
  local why
  if [ "${1:-}" = --no-real-node ] || [ "${BARGE_REAL_NODE:-1}" = 0 ]; then
    log "no real node (turned off): kwok nodes only"; return 0
  fi
  if ! why=$(real_node_unable); then
    log "no real node: $why; kwok nodes only"; return 0
  fi
  log "starting the real node $REAL_NODE (containerd, kubelet $K8S_VERSION) on $REAL_NODE_IP"
  if ! "$repo/hack/cluster/build.sh" real-node || ! (real_node_up); then
    log "no real node: it did not start (see $state/logs/kubelet.log and containerd.log); kwok nodes only"
    real_node_down_keep_logs
  fi
}

real_node_down_keep_logs() { # a failed start: remove the node, keep the logs that say why
  real_node_down
  sed -i '/^REAL_NODE=/d' "$state/ports.env"
  rm -f "$state/pids/kubelet" "$state/pids/containerd"
}

env_lines() {
  [ -f "$state/ports.env" ] || die "no cluster: run hack/cluster.sh up"
  # shellcheck disable=SC1091
  source "$state/ports.env"
  echo "export KUBECONFIG=$state/kubeconfig"
  echo "export PATH=$BIN_DIR:${HELM_DIR:+$HELM_DIR:}\$PATH"
  # aws-cli v1 and boto3, for the AWS Batch API's tests (not put on PATH).
  [ -z "${AWS_CLIENTS_BIN:-}" ] || echo "export BARGE_AWS_CLIENTS_BIN=$AWS_CLIENTS_BIN"
  # moto with pytest and its own test suite, for the moto-subset test of the Batch API.
  [ -z "${MOTO_VENV:-}" ] || echo "export BARGE_MOTO_VENV=$MOTO_VENV"
  # Snakemake with its AWS Batch executor, for the workflow test of the Batch API.
  [ -z "${SNAKEMAKE_VENV:-}" ] || echo "export BARGE_SNAKEMAKE_VENV=$SNAKEMAKE_VENV"
  # Metaflow and Airflow, for the workflow engines' tests on the real node (tests/engines.rs).
  [ -z "${METAFLOW_VENV:-}" ] || echo "export BARGE_METAFLOW_VENV=$METAFLOW_VENV"
  [ -z "${AIRFLOW_VENV:-}" ] || echo "export BARGE_AIRFLOW_VENV=$AIRFLOW_VENV"
  # The real node's name, for its tests and the demo's last job (hack/cluster/real-node.sh).
  if [ -n "${REAL_NODE:-}" ] && alive kubelet; then echo "export BARGE_REAL_NODE=$REAL_NODE"; fi
  # moto where the real node's pods reach it (hack/cluster/real-node.sh).
  if alive moto-node; then echo "export BARGE_MOTO_NODE_URL=http://$REAL_NODE_IP:$MOTO_PORT"; fi
  if alive moto; then
    echo "export AWS_ENDPOINT_URL_EC2=http://127.0.0.1:$MOTO_PORT"
    echo "export BARGE_MOTO_URL=http://127.0.0.1:$MOTO_PORT"
  fi
}

status() {
  [ -d "$state/pids" ] || { echo "not running"; return 1; }
  local c rc=0
  for c in "${components[@]}"; do
    [ -f "$state/pids/$c" ] || continue
    if alive "$c"; then echo "$c: running (pid $(cat "$state/pids/$c"))"; else echo "$c: stopped"; rc=1; fi
  done
  return $rc
}

down_quiet() {
  local c pid
  real_node_down
  for c in barge kwok moto kube-scheduler kube-controller-manager kube-apiserver etcd; do
    [ -f "$state/pids/$c" ] || continue
    pid=$(cat "$state/pids/$c")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  rm -rf "$state"
}

case "${1:-}" in
  up) shift; up "$@" ;;
  down) down_quiet; log "stopped" ;;
  status) status ;;
  leftovers) real_node_leftovers ;;
  env) env_lines ;;
  stop-for) stop_for "${2:?component}" "${3:?seconds}" ;;
  pause-for) pause_for "${2:?component}" "${3:?seconds}" ;;
  *) echo "usage: $0 up [--no-real-node]|down|status|env|stop-for C S|pause-for C S" >&2; exit 2 ;;
esac
