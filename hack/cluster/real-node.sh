# The local cluster's real node, sourced by hack/cluster.sh: containerd (Debian's 1.6, with
# runc) and a kubelet of the control plane's version that registers as `real-0`, so that
# Barge's pods on it really run: exit codes, signals, environment and logs.
#
# Everything stays on this machine: the node's address is a /32 on the loopback device
# (TEST-NET-2, RFC 5737, routed nowhere), and pods get addresses on a bridge of their own
# (198.18.0.0/24, RFC 2544's benchmarking range: machines like this one reach their package
# registries through the TEST-NET ranges) with no default route and no masquerade, so they
# reach each other and the node only (a route to the node's address through the bridge). IP forwarding is not turned
# on. moto, which listens on 127.0.0.1, is also on the node's address (socat forwards to it),
# so a job reaches the test bed's S3 and SQS at http://$REAL_NODE_IP:<moto's port>, the
# endpoint it is given like any other setting.
#
# The node is labelled and tainted `barge.dev/real-node=true` (NoSchedule): only pods that
# tolerate it land there, such as those of an unmanaged compute environment that selects it
# (examples/real-node.yaml). Its only images are busybox:$BUSYBOX_TAG and the pause image,
# made by hack/cluster/build.sh real-node: nothing is pulled. Beside them, python:$PYTHON_TAG
# (Debian's python3 with boto3, requests, Pillow and pip) for jobs that run Python, and
# snakemake/snakemake:v$SNAKEMAKE_VERSION (that and Snakemake) for Snakemake's steps.
#
# Needs: cluster.sh's log, die, start, alive, wait_for; $state, $pki; versions.env.

REAL_NODE=real-0
REAL_NODE_IP=198.51.100.10
REAL_POD_SUBNET=198.18.0.0/24
REAL_POD_GATEWAY=198.18.0.1
REAL_BRIDGE=barge0
REAL_NODE_LABEL=barge.dev/real-node

real_dir() { echo "$state/real"; }
real_sock() { echo "$(real_dir)/containerd/containerd.sock"; }
real_ctr() { ctr --address "$(real_sock)" --namespace k8s.io "$@"; }

# Why this machine cannot run the real node, in one line (and status 1); nothing if it can.
real_node_unable() {
  [ "$(id -u)" = 0 ] || { echo "not root (containerd and the kubelet need it)"; return 1; }
  command -v apt-get >/dev/null || command -v containerd >/dev/null \
    || { echo "no containerd and no apt-get to install it"; return 1; }
  grep -qw overlay /proc/filesystems || { echo "the kernel has no overlay filesystem"; return 1; }
  [ -d /sys/fs/cgroup/memory ] || [ -f /sys/fs/cgroup/cgroup.controllers ] \
    || { echo "no memory cgroup mounted"; return 1; }
  local eff; eff=$((16#$(awk '/^CapEff/ {print $2}' /proc/self/status)))
  (( (eff >> 12) & 1 && (eff >> 21) & 1 )) \
    || { echo "no CAP_NET_ADMIN and CAP_SYS_ADMIN (a container without privileges?)"; return 1; }
  local routed
  routed=$(ip -4 route show to match "$REAL_POD_GATEWAY" | grep -v "^default\|dev $REAL_BRIDGE " | head -1 || true)
  [ -z "$routed" ] || { echo "the pods' range $REAL_POD_SUBNET is this machine's already ($routed)"; return 1; }
  if real_node_running /; then
    [ -d "$(real_dir)" ] || { echo "another cluster's real node runs on this machine"; return 1; }
  elif [ -n "$(real_node_leftovers)" ]; then
    real_node_reclaim >&2
  fi
  return 0
}

# Whether a kubelet or containerd of a real node runs: the one of real directory $1, or any
# when $1 is `/`.
real_node_running() {
  local dir=${1%/}
  pgrep -f "containerd --config $dir.*/containerd/|kubelet --config $dir.*/kubelet/" >/dev/null
}

# A real node whose run was killed before its `down` leaves the bridge, the address, mounts,
# cgroups and chains behind with no process: take them back, so that this cluster's node
# starts and its own `down` leaves the machine clean. Whose they were: the bridge's alias
# names its node's directory, and so do the mounts left under it.
real_node_reclaim() {
  local owners owner
  owners=$({
    cat "/sys/class/net/$REAL_BRIDGE/ifalias" 2>/dev/null || true
    awk '$2 ~ /\/real\/(containerd|kubelet)(\/|$)/ {sub(/\/real\/.*/, "/real", $2); print $2}' /proc/self/mounts
  } | grep -v '^$' | sort -u || true)
  log "taking back what a real node left when its run ended without \`down\`: ${owners:-owner unknown}"
  for owner in $owners; do real_node_clean "$owner"; done
  real_node_clean /nonexistent/real  # the bridge and the address, whoever's they were
}

real_node_certs() {
  cd "$pki"
  # The kubelet, as the Node authorizer expects it; the apiserver's client to kubelets.
  openssl req -newkey rsa:2048 -nodes -keyout kubelet.key -out kubelet.csr \
    -subj "/O=system:nodes/CN=system:node:$REAL_NODE" 2>/dev/null
  openssl x509 -req -in kubelet.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
    -extfile san.cnf -extensions client -out kubelet.crt 2>/dev/null
  cd - >/dev/null
}

# What the kubelet, containerd and the CNI plugins make outside the state directory whatever
# they are told: `down` removes each one that was not there before `up`.
real_outside_paths=(/var/lib/kubelet /var/lib/cni /run/containerd)
real_chains=("filter KUBE-FIREWALL" "mangle KUBE-IPTABLES-HINT" "mangle KUBE-KUBELET-CANARY"
  "nat KUBE-KUBELET-CANARY" "filter KUBE-KUBELET-CANARY")

real_node_up() {
  local real p c; real=$(real_dir)
  mkdir -p "$real"/{containerd,cni/conf,cni/ipam,kubelet,runc}
  : >"$real/made"
  for p in "${real_outside_paths[@]}"; do [ -e "$p" ] || echo "path $p" >>"$real/made"; done
  for c in "${real_chains[@]}"; do
    # shellcheck disable=SC2086 # "table chain"
    iptables -t ${c% *} -S ${c#* } >/dev/null 2>&1 || echo "chain iptables $c" >>"$real/made"
    # shellcheck disable=SC2086
    ip6tables -t ${c% *} -S ${c#* } >/dev/null 2>&1 || echo "chain ip6tables $c" >>"$real/made"
  done
  eval "$("$repo/hack/cluster/build.sh" paths)"
  local kubelet_port healthz_port
  read -r kubelet_port healthz_port < <(free_ports 2)

  # The node's address and the pods' bridge.
  # `replace` is idempotent; no `ip … | grep -q` here or below: under pipefail, grep leaving
  # early makes ip die of SIGPIPE and the test read "absent" at random.
  ip addr replace "$REAL_NODE_IP/32" dev lo
  [ -e /sys/class/net/$REAL_BRIDGE ] || ip link add "$REAL_BRIDGE" type bridge
  ip link set "$REAL_BRIDGE" alias "$real"  # its owner, for an up that finds it left behind
  ip addr replace "$REAL_POD_GATEWAY/${REAL_POD_SUBNET#*/}" dev "$REAL_BRIDGE"
  ip link set "$REAL_BRIDGE" up
  cat >"$real/cni/conf/10-barge.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "barge-real",
  "plugins": [{
    "type": "bridge", "bridge": "$REAL_BRIDGE", "isGateway": false, "ipMasq": false,
    "hairpinMode": true,
    "ipam": {"type": "host-local", "dataDir": "$real/cni/ipam",
             "ranges": [[{"subnet": "$REAL_POD_SUBNET", "rangeStart": "${REAL_POD_SUBNET%.*}.10"}]],
             "routes": [{"dst": "$REAL_NODE_IP/32", "gw": "$REAL_POD_GATEWAY"}]}
  }]
}
JSON

  # containerd with every path under the cluster's state; restrict_oom_score_adj because
  # these VMs lack CAP_SYS_RESOURCE, without which runc cannot lower a sandbox's OOM score.
  cat >"$real/containerd/config.toml" <<TOML
version = 2
root = "$real/containerd/root"
state = "$real/containerd/state"
[grpc]
  address = "$(real_sock)"
[ttrpc]
  address = "$(real_sock).ttrpc"
[debug]
  level = "warn"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:$PAUSE_TAG"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$real/cni/conf"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$real/runc"
TOML
  start containerd containerd --config "$real/containerd/config.toml"
  wait_for containerd 30 real_ctr version
  real_ctr images import "$NODE_IMAGES/pause.tar" >/dev/null
  real_ctr images import "$NODE_IMAGES/busybox.tar" >/dev/null
  real_ctr images import "$PYTHON_IMAGES/python.tar" >/dev/null
  real_ctr images import "$PYTHON_IMAGES/snakemake.tar" >/dev/null
  if alive moto; then
    # shellcheck disable=SC1091
    source "$state/ports.env"
    start moto-node socat "TCP-LISTEN:$MOTO_PORT,bind=$REAL_NODE_IP,fork,reuseaddr" "TCP:127.0.0.1:$MOTO_PORT"
    wait_for "moto on $REAL_NODE_IP" 10 curl -sf "http://$REAL_NODE_IP:$MOTO_PORT/moto-api/"
  fi

  real_node_certs
  write_kubeconfig kubelet "$state/kubelet.kubeconfig"
  cat >"$real/kubelet/config.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $REAL_NODE_IP
port: $kubelet_port
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $healthz_port
containerRuntimeEndpoint: unix://$(real_sock)
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $pki/ca.crt}
authorization: {mode: Webhook}
registerWithTaints:
- {key: $REAL_NODE_LABEL, value: "true", effect: NoSchedule}
clusterDomain: cluster.local
maxPods: 32
serializeImagePulls: false
# Its images cannot be pulled again: never collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%"}
YAML
  start kubelet "$KUBELET_BIN/kubelet" --config "$real/kubelet/config.yaml" \
    --kubeconfig "$state/kubelet.kubeconfig" --root-dir "$real/kubelet" \
    --cert-dir "$real/kubelet/pki" --hostname-override "$REAL_NODE" --node-ip "$REAL_NODE_IP" \
    --node-labels "$REAL_NODE_LABEL=true" --v=1
  echo "REAL_NODE=$REAL_NODE" >>"$state/ports.env"
  wait_for "the real node $REAL_NODE" 120 "$K8S_BIN/kubectl" --kubeconfig "$state/kubeconfig" \
    wait --for=condition=Ready "node/$REAL_NODE" --timeout=1s
}

# Stops and removes what real_node_up made, also after a partial start or a crash.
real_node_down() {
  local real pid c; real=$(real_dir)
  [ -d "$real" ] || return 0  # not this cluster's: another checkout's may be running
  for c in kubelet moto-node; do
    [ -f "$state/pids/$c" ] || continue
    pid=$(cat "$state/pids/$c"); kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  if [ -S "$(real_sock)" ] && alive containerd; then
    local ids
    ids=$(real_ctr tasks ls -q 2>/dev/null || true)
    for c in $ids; do real_ctr tasks kill -s SIGKILL "$c" >/dev/null 2>&1 || true; done
    for c in $ids; do
      for _ in $(seq 1 20); do real_ctr tasks delete "$c" >/dev/null 2>&1 && break; sleep 0.1; done
    done
    for c in $(real_ctr containers ls -q 2>/dev/null || true); do
      real_ctr containers delete "$c" >/dev/null 2>&1 || true
    done
  fi
  if [ -f "$state/pids/containerd" ]; then
    pid=$(cat "$state/pids/containerd"); kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  real_node_clean "$real"
}

# Removes what a real node of real directory $1 leaves once its kubelet and containerd are
# gone: shims, containers' processes, mounts, cgroups, chains, outside paths, the bridge,
# the address and the directory.
real_node_clean() {
  local real=$1 pid
  # A forwarder to moto on the node's address that outlived its cluster.
  pkill -f "^socat TCP-LISTEN:[0-9]+,bind=$REAL_NODE_IP," 2>/dev/null || true
  # Shims (and what runs under them) that outlived containerd.
  for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $real/containerd/containerd.sock" 2>/dev/null || true); do
    kill -9 "$pid" 2>/dev/null || true
  done
  local cg
  for cg in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
    [ -d "$cg" ] || continue
    find "$cg" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -9 2>/dev/null || true
  done
  sleep 0.2
  # Mounts: container root filesystems, sandboxes' /dev/shm, network namespaces, volumes.
  local m
  for m in $(awk -v r="$real/" 'index($2, r) == 1 {print $2}' /proc/self/mounts | sort -r); do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done
  for cg in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
    [ -d "$cg" ] || continue
    find "$cg" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
  # The kubelet's iptables chains (KUBE-FIREWALL drops what comes to 127.0.0.0/8 from
  # elsewhere) and the paths it, containerd's shims and libcni make outside the state.
  local kind what tool table chain
  while read -r kind what table chain; do
    case $kind in
      path) rm -rf "$what" ;;
      chain)
        tool=$what
        command -v "$tool" >/dev/null || continue
        while "$tool" -t "$table" -D INPUT -j "$chain" 2>/dev/null; do :; done
        while "$tool" -t "$table" -D OUTPUT -j "$chain" 2>/dev/null; do :; done
        "$tool" -t "$table" -F "$chain" 2>/dev/null || true
        "$tool" -t "$table" -X "$chain" 2>/dev/null || true ;;
    esac
  done < <(cat "$real/made" 2>/dev/null || true)
  rm -f /var/lib/cni/results/barge-real-* 2>/dev/null || true
  [ ! -e /sys/class/net/$REAL_BRIDGE ] || ip link del "$REAL_BRIDGE" 2>/dev/null || true
  if real_node_address_on_lo; then ip addr del "$REAL_NODE_IP/32" dev lo || true; fi
  rm -rf "$real"
}

# Whether the node's address is on the loopback device (read whole, then matched: no pipe).
real_node_address_on_lo() {
  local addrs; addrs=$(ip -o -4 addr show dev lo 2>/dev/null) || return 1
  [[ $addrs == *" $REAL_NODE_IP/32 "* ]]
}

# What is left of a real node on this machine, a line each (nothing when clean): for CI
# after `down`, and for anyone who wonders.
real_node_leftovers() {
  local c p
  [ ! -e /sys/class/net/$REAL_BRIDGE ] || echo "the bridge $REAL_BRIDGE"
  ! real_node_address_on_lo || echo "the address $REAL_NODE_IP on lo"
  pgrep -af "containerd-shim-runc-v2|containerd --config .*/real/containerd|kubelet --config .*/real/kubelet|^socat TCP-LISTEN:[0-9]+,bind=$REAL_NODE_IP," \
    | sed 's/^/process /' || true
  awk '$2 ~ /\/real\/(containerd|kubelet)(\/|$)/ {print "mount " $2}' /proc/self/mounts
  find /sys/fs/cgroup -maxdepth 2 -name kubepods 2>/dev/null | sed 's/^/cgroup /'
  for c in "${real_chains[@]}"; do
    # shellcheck disable=SC2086
    iptables -t ${c% *} -S ${c#* } >/dev/null 2>&1 && echo "iptables chain $c"
    # shellcheck disable=SC2086
    ip6tables -t ${c% *} -S ${c#* } >/dev/null 2>&1 && echo "ip6tables chain $c"
  done
  for p in /var/lib/cni/results/barge-real-*; do [ -e "$p" ] && echo "file $p"; done
  for p in "${real_outside_paths[@]}"; do [ -e "$p" ] && echo "path $p"; done
  true
}
