#!/usr/bin/env bash
# Builds the local control plane (kube-apiserver, kube-scheduler, kube-controller-manager,
# kubectl, etcd, kwok) and helm from the Go module proxy into a cache keyed by version, and
# the moto venv. A warm cache makes this a no-op.
#
# Safe to run from two checkouts (or a test run beside a demo) sharing one cache: each
# component is built under its own lock, and a component counts as built only when each of
# its binaries runs. A half-built or broken one is built again, not found missing later.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
cache=${BARGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/barge}
export GOFLAGS=-mod=mod GOTOOLCHAIN=local

k8s_bin="$cache/k8s-$K8S_VERSION"
etcd_bin="$cache/etcd-$ETCD_VERSION"
kwok_bin="$cache/kwok-$KWOK_VERSION"
moto_venv="$cache/moto-$MOTO_VERSION"
clients_venv="$cache/aws-clients-$AWSCLI_VERSION"
snakemake_venv="$cache/snakemake-$SNAKEMAKE_VERSION-$SNAKEMAKE_AWS_BATCH_VERSION"
# "-2": built with the Kubernetes version ldflags (an earlier build without them assumed v1.20).
helm_bin="$cache/helm-$HELM_VERSION-2"
kueue_bin="$cache/kueue-$KUEUE_VERSION"
karpenter_bin="$cache/karpenter-$KARPENTER_VERSION"
kubelet_bin="$cache/kubelet-$K8S_VERSION"
node_images="$cache/node-images-$K8S_VERSION-$BUSYBOX_TAG"

log() { printf '[build] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

runs() { # runs <dir> <command line>...: each command, relative to dir, exits 0
  local dir=$1 cmd; shift
  for cmd in "$@"; do
    # shellcheck disable=SC2086
    (cd "$dir" 2>/dev/null && ./$cmd) >/dev/null 2>&1 || return 1
  done
}

# ensure <name> <dir> <cold minutes> <build function> <check command>...
# Builds into <dir>.tmp.<pid> and moves it into place, under <name>'s lock.
ensure() {
  local name=$1 dir=$2 cold=$3 build=$4; shift 4
  runs "$dir" "$@" && return
  mkdir -p "$cache"
  local lock
  exec {lock}>"$cache/.$name.lock"
  if ! flock -n "$lock"; then
    log "waiting for another build of $name to finish"
    flock "$lock"
  fi
  if ! runs "$dir" "$@"; then
    log "building $name (about $cold min on a cold 2-core machine)"
    local start=$SECONDS tmp="$dir.tmp.$$"
    rm -rf "$dir".tmp.*; mkdir -p "$tmp"  # what an interrupted build left
    "$build" "$tmp"
    runs "$tmp" "$@" || die "$name was built but does not run: $* in $tmp"
    rm -rf "$dir"; mv "$tmp" "$dir"
    log "built $name in $((SECONDS - start)) s"
  fi
  flock -u "$lock"
  exec {lock}>&-
}

go_k8s() {
  local minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  (cd "$here/k8s" && go build -trimpath -o "$1/" \
    -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION \
      -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor \
      -X k8s.io/component-base/version.gitTreeState=clean \
      -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION \
      -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-scheduler \
    k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kubectl)
}

# Karpenter with its kwok cloud provider, and its CRDs (from the module) beside it.
go_karpenter() {
  (cd "$here/karpenter" && go build -trimpath -ldflags "-s -w" -o "$1/karpenter" sigs.k8s.io/karpenter/kwok)
  local dir
  dir=$(cd "$here/karpenter" && go list -m -f '{{.Dir}}' sigs.k8s.io/karpenter)
  mkdir -p "$1/crds"
  cp "$dir"/kwok/charts/crds/*.yaml "$dir"/kwok/apis/crds/*.yaml "$1/crds/"
  chmod -R u+w "$1/crds"
}

# The real node's kubelet, from the same wrapper module as the control plane.
go_kubelet() {
  local minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  (cd "$here/k8s" && go build -trimpath -o "$1/" \
    -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION \
      -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor \
      -X k8s.io/component-base/version.gitTreeState=clean" \
    k8s.io/kubernetes/cmd/kubelet)
}

# The real node's images, made here since no registry is reachable: the pause image from
# Kubernetes' own pause.c (in its module), compiled static, and busybox from Debian's
# busybox-static with a link per applet. Imported into containerd by hack/cluster.sh.
node_images() {
  local dir applet links=()
  dir=$(cd "$here/k8s" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)
  gcc -Os -static -DVERSION="$PAUSE_TAG-barge" -o "$1/pause" "$dir/build/pause/linux/pause.c"
  strip "$1/pause"
  python3 "$here/oci-image.py" "$1/pause.tar" "registry.k8s.io/pause:$PAUSE_TAG" \
    --file "$1/pause:/pause" --entrypoint /pause
  for applet in $(/bin/busybox --list); do
    [ "$applet" = busybox ] || links+=(--link "/bin/$applet:busybox")
  done
  python3 "$here/oci-image.py" "$1/busybox.tar" "docker.io/library/busybox:$BUSYBOX_TAG" \
    --file /bin/busybox:/bin/busybox "${links[@]}" --dir /tmp --dir /etc --dir /root --cmd sh
}

# What the real node needs from Debian's packages; installed only as root.
real_node_packages=(containerd runc containernetworking-plugins busybox-static iproute2)
node_packages() {
  local missing=() p
  for p in "${real_node_packages[@]}"; do
    [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ] || missing+=("$p")
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  [ "$(id -u)" = 0 ] || die "the real node needs ${missing[*]} (Debian packages) and root to install them"
  log "installing ${missing[*]} from Debian's packages"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

go_etcd() {
  (cd "$here/etcd" && go build -trimpath -ldflags "-s -w" -o "$1/etcd" .)
}

go_kwok() {
  (cd "$here/kwok" && go build -trimpath -ldflags "-s -w" -o "$1/kwok" sigs.k8s.io/kwok/cmd/kwok)
}

go_helm() {
  # As Helm's own Makefile does: the Kubernetes version Helm assumes offline (`helm template`
  # without a cluster) comes from its client-go module, v0.M.N meaning Kubernetes 1.M.
  local client_go major minor
  client_go=$(cd "$here/helm" && go list -m -f '{{.Version}}' k8s.io/client-go)
  client_go=${client_go#v}
  major=$(( ${client_go%%.*} + 1 )); minor=${client_go#*.}; minor=${minor%%.*}
  (cd "$here/helm" && go build -trimpath -o "$1/helm" \
    -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION \
      -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=$major \
      -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$minor \
      -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=$major \
      -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor" \
    helm.sh/helm/v3/cmd/helm)
}

# Kueue's manager, with the CRDs of the same version (from its module) beside it.
go_kueue() {
  (cd "$here/kueue" && go build -trimpath -ldflags "-s -w \
      -X sigs.k8s.io/kueue/pkg/version.GitVersion=$KUEUE_VERSION" \
    -o "$1/kueue" sigs.k8s.io/kueue/cmd/kueue)
  local dir
  dir=$(cd "$here/kueue" && go list -m -f '{{.Dir}}' sigs.k8s.io/kueue)
  mkdir -p "$1/crds"
  cp "$dir"/config/components/crd/bases/*.yaml "$1/crds/"
  chmod -R u+w "$1/crds"
}

# venv <name> <dir> <check command> <pip requirement>...: a venv with these installed,
# made in place (a venv is not relocatable: its scripts name its path) under a lock. When
# $after_install names a function, it runs in the new venv's directory before the check.
venv() {
  local name=$1 dir=$2 check=$3; shift 3
  [ -f "$dir/.complete" ] && "$dir/bin/python" -c "$check" 2>/dev/null && return
  mkdir -p "$cache"
  local lock start=$SECONDS
  exec {lock}>"$cache/.$name.lock"
  flock "$lock"
  if ! { [ -f "$dir/.complete" ] && "$dir/bin/python" -c "$check" 2>/dev/null; }; then
    log "installing $* into a venv (about 1 min)"
    rm -rf "$dir"
    python3 -m venv "$dir"
    "$dir/bin/pip" install --quiet --disable-pip-version-check "$@"
    [ -z "${after_install:-}" ] || (cd "$dir" && "$after_install")
    "$dir/bin/python" -c "$check" || die "$name installed but does not import"
    touch "$dir/.complete"
    log "installed $name in $((SECONDS - start)) s"
  fi
  flock -u "$lock"
  exec {lock}>&-
}

# moto's own Batch tests ship in its sdist (not in the wheel): the AWS Batch API runs a
# selection of them (tests/batch_api/moto_tests.txt), with pytest, from suite/tests.
moto_suite() {
  local tmp; tmp=$(mktemp -d)
  bin/pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: \
    -d "$tmp" "moto==$MOTO_VERSION"
  mkdir -p suite
  tar -xzf "$tmp/moto-$MOTO_VERSION.tar.gz" -C suite --strip-components=1 "moto-$MOTO_VERSION/tests"
  rm -rf "$tmp"
}
build_moto() {
  after_install=moto_suite venv moto "$moto_venv" \
    "import moto.server, pytest, os; assert os.path.isdir('$moto_venv/suite/tests/test_batch')" \
    "moto[server,ec2]==$MOTO_VERSION" pytest
}
build_snakemake() {
  venv snakemake "$snakemake_venv" 'import snakemake, snakemake_executor_plugin_aws_batch, snakemake_storage_plugin_s3' \
    "snakemake==$SNAKEMAKE_VERSION" "snakemake-executor-plugin-aws-batch==$SNAKEMAKE_AWS_BATCH_VERSION" \
    "snakemake-storage-plugin-s3==$SNAKEMAKE_S3_VERSION"
}
build_aws_clients() { venv aws-clients "$clients_venv" 'import boto3, awscli' "awscli==$AWSCLI_VERSION" boto3; }

build_etcd() { ensure "etcd-$ETCD_VERSION" "$etcd_bin" 2 go_etcd "etcd --version"; }
build_kwok() { ensure "kwok-$KWOK_VERSION" "$kwok_bin" 2 go_kwok "kwok --help"; }
build_k8s() {
  ensure "kubernetes-$K8S_VERSION" "$k8s_bin" 10 go_k8s "kube-apiserver --version" \
    "kube-scheduler --version" "kube-controller-manager --version" "kubectl version --client"
}
build_helm() { ensure "helm-$HELM_VERSION" "$helm_bin" 2 go_helm "helm version"; }
build_real_node() {
  node_packages
  ensure "kubelet-$K8S_VERSION" "$kubelet_bin" 2 go_kubelet "kubelet --version"
  ensure "node-images-$K8S_VERSION-$BUSYBOX_TAG" "$node_images" 1 node_images "pause -v"
}
build_karpenter() { ensure "karpenter-$KARPENTER_VERSION" "$karpenter_bin" 10 go_karpenter "karpenter --help"; }
build_kueue() { ensure "kueue-$KUEUE_VERSION" "$kueue_bin" 10 go_kueue "kueue --help"; }

all() {
  local start=$SECONDS
  runs "$k8s_bin" "kube-apiserver --version" || log "the first build of the control plane takes about 15 min on 2 cores (etcd, kwok, Kubernetes, moto, helm; ~2 GB of Go modules); later runs reuse $cache"
  build_etcd; build_kwok; build_k8s; build_moto; build_aws_clients; build_snakemake; build_helm
  [ $((SECONDS - start)) -lt 5 ] || log "test bed ready in $((SECONDS - start)) s"
}

case "${1:-all}" in
  all) all ;;
  k8s) build_k8s ;; etcd) build_etcd ;; kwok) build_kwok ;; moto) build_moto ;; aws-clients) build_aws_clients ;; snakemake) build_snakemake ;; helm) build_helm ;;
  kueue) build_kueue ;;
  real-node) build_real_node ;;
  karpenter) build_karpenter ;;
  paths) echo "K8S_BIN=$k8s_bin"; echo "ETCD_BIN=$etcd_bin"; echo "KWOK_BIN=$kwok_bin"; echo "MOTO_VENV=$moto_venv"
         echo "AWS_CLIENTS_VENV=$clients_venv"; echo "SNAKEMAKE_VENV=$snakemake_venv"
         echo "HELM_BIN=$helm_bin"; echo "KUEUE_BIN=$kueue_bin"
         echo "KARPENTER_BIN=$karpenter_bin"; echo "KUBELET_BIN=$kubelet_bin"; echo "NODE_IMAGES=$node_images" ;;
  *) echo "usage: $0 [all|k8s|etcd|kwok|moto|aws-clients|snakemake|helm|kueue|karpenter|real-node|paths]" >&2; exit 2 ;;
esac
