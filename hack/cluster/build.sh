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
metaflow_venv="$cache/metaflow-$METAFLOW_VERSION"
airflow_venv="$cache/airflow-$AIRFLOW_VERSION-$AIRFLOW_AMAZON_VERSION"
# "-2": built with the Kubernetes version ldflags (an earlier build without them assumed v1.20).
helm_bin="$cache/helm-$HELM_VERSION-2"
kueue_bin="$cache/kueue-$KUEUE_VERSION"
karpenter_bin="$cache/karpenter-$KARPENTER_VERSION"
kubelet_bin="$cache/kubelet-$K8S_VERSION"
node_images="$cache/node-images-$K8S_VERSION-$BUSYBOX_TAG"
python_image="$cache/python-images-$PYTHON_TAG-$PYTHON_IMAGE_REVISION-snakemake-$SNAKEMAKE_VERSION"

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

# The Python image, tagged as Docker's python:$PYTHON_TAG: Debian's python3 with requests,
# Pillow and pip, bash and busybox, unpacked from the packages apt resolves for them from
# nothing (an empty dpkg status), and boto3 from PyPI: Debian 12's (1.26) predates
# AWS_ENDPOINT_URL_<SERVICE>, with which a job names its endpoints. No maintainer script
# runs, so what they would do is done here: /bin/sh, the CA bundle, the modules' bytecode
# (checked by hash, since every file in the layer has time 0). Debian's marker that keeps
# pip off its system Python is left out, as in Docker's image, whose one Python is the user's.
python_image_packages=(python3 python-is-python3 python3-pip python3-requests python3-pil
  python3-jmespath python3-dateutil python3-urllib3 bash coreutils tar gzip busybox-static
  ca-certificates base-passwd)
python_image() {
  local work=$1/work root=$1/work/root
  mkdir -p "$work/debs" "$root"
  : >"$work/status"
  if ! apt-cache show python3-boto3 >/dev/null 2>&1; then
    [ "$(id -u)" = 0 ] || die "the Python image needs Debian's package lists (apt-get update, as root)"
    apt-get update -qq
  fi
  apt-get install -s -qq --no-install-recommends -o Dir::State::status="$work/status" \
    "${python_image_packages[@]}" | awk '/^Inst /{print $2}' >"$work/packages"
  # shellcheck disable=SC2046
  (cd "$work/debs" && apt-get download -qq -o APT::Sandbox::User=root $(cat ../packages))
  local deb
  for deb in "$work"/debs/*.deb; do dpkg-deb -x "$deb" "$root"; done
  rm -rf "$root"/usr/share/{doc,man,info,locale,lintian} "$root"/usr/lib/python3.*/EXTERNALLY-MANAGED
  ln -sf bash "$root/bin/sh"
  # busybox's applets where Debian's packages left a command out (hostname, ps, wget, …).
  local applet
  for applet in $("$root/bin/busybox" --list); do
    [ -e "$root/bin/$applet" ] || [ -e "$root/usr/bin/$applet" ] || [ -e "$root/sbin/$applet" ] \
      || [ -e "$root/usr/sbin/$applet" ] || ln -s busybox "$root/bin/$applet"
  done
  # base-passwd's files (its maintainer script makes them): root's name, which getpass asks for.
  cp "$root/usr/share/base-passwd/passwd.master" "$root/etc/passwd"
  cp "$root/usr/share/base-passwd/group.master" "$root/etc/group"
  cat "$root"/usr/share/ca-certificates/*/*.crt >"$root/etc/ssl/certs/ca-certificates.crt"
  local version; version=$(basename "$root"/usr/lib/python3.[0-9]*)
  # Pure Python: any pip installs them for the image's Python.
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps --no-compile \
    --target "$root/usr/local/lib/$version/dist-packages" \
    "boto3==$PYTHON_IMAGE_BOTO3" "botocore==$PYTHON_IMAGE_BOTO3" "s3transfer==$PYTHON_IMAGE_S3TRANSFER"
  cp -a "$root" "$work/snakemake"
  compile_modules "$root" "$version"
  python3 "$here/oci-image.py" "$1/python.tar" "docker.io/library/python:$PYTHON_TAG" --tree "$root" \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8 --cmd python3
  printf '%s\n' "$(wc -l <"$work/packages") Debian packages, $(du -sm "$root" | cut -f1) MiB unpacked" >"$1/python.txt"

  # Snakemake's image, under the name its AWS Batch executor uses by default
  # (snakemake/snakemake:v<version>): the Python image with Snakemake and its S3 storage plugin
  # from PyPI, for the `snakemake` each step's job runs. Wheels for CPython 3.11 on glibc,
  # which the image's Python is; the scripts pip makes name this machine's Python, so they are
  # pointed at the image's.
  root=$work/snakemake
  # (pip's complaints about this machine's own packages go to a log, shown if it fails.)
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-compile --upgrade \
    --target "$root/usr/local/lib/$version/dist-packages" "snakemake==$SNAKEMAKE_VERSION" \
    "snakemake-storage-plugin-s3==$SNAKEMAKE_S3_VERSION" \
    "boto3==$PYTHON_IMAGE_BOTO3" "botocore==$PYTHON_IMAGE_BOTO3" "s3transfer==$PYTHON_IMAGE_S3TRANSFER" \
    2>"$work/pip.log" || { cat "$work/pip.log" >&2; die "pip could not install Snakemake into its image"; }
  # Snakemake's AWS Batch executor has each job `pip install` the storage plugin before it runs
  # (auto_deploy_default_storage_provider, fixed by the plugin). The real node's pods reach no
  # index, so the image's pip is an offline one: it finds the plugin and its dependencies in
  # wheels kept in the image (/etc/pip.conf), as an image built for a closed network would.
  # The same versions as those installed, so that what a job deploys agrees with Snakemake.
  python3 -m pip freeze --path "$root/usr/local/lib/$version/dist-packages" >"$work/installed.txt"
  python3 -m pip download --quiet --disable-pip-version-check --dest "$root/usr/local/share/wheels" \
    --constraint "$work/installed.txt" "snakemake-storage-plugin-s3==$SNAKEMAKE_S3_VERSION"
  printf '[global]\nno-index = true\nfind-links = /usr/local/share/wheels\n' >"$root/etc/pip.conf"
  mkdir -p "$root/usr/local/bin"
  mv "$root/usr/local/lib/$version/dist-packages/bin/"* "$root/usr/local/bin/"
  rmdir "$root/usr/local/lib/$version/dist-packages/bin"
  sed -i '1s|^#!.*python.*$|#!/usr/bin/python3|' "$root"/usr/local/bin/*
  compile_modules "$root" "$version"
  python3 "$here/oci-image.py" "$1/snakemake.tar" "docker.io/snakemake/snakemake:v$SNAKEMAKE_VERSION" --tree "$root" \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8 --cmd bash
  rm -rf "$work"
  printf '#!/bin/sh\n# the check ensure runs: the images are there\ntest -s python.tar && test -s snakemake.tar\n' >"$1/verify"
  chmod +x "$1/verify"
}

# compile_modules <root> <pythonX.Y>: the image's modules' bytecode, checked by hash (every
# file in the layer has time 0), when this machine has the same Python version.
compile_modules() {
  if [ "$(python3 -c 'import sys; print("python%d.%d" % sys.version_info[:2])')" = "$2" ]; then
    python3 -m compileall -q -j0 --invalidation-mode unchecked-hash -s "$1" -p / \
      "$1/usr/lib/$2" "$1/usr/lib/python3/dist-packages" "$1/usr/local/lib/$2" >/dev/null
  else
    log "no $2 here to compile the image's modules with: they compile in each container"
  fi
}

# What the real node needs from Debian's packages; installed only as root.
real_node_packages=(containerd runc containernetworking-plugins busybox-static iproute2 socat)
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
build_metaflow() { venv metaflow "$metaflow_venv" 'import metaflow, boto3' "metaflow==$METAFLOW_VERSION" boto3; }
build_airflow() {
  venv airflow "$airflow_venv" 'import airflow, airflow.providers.amazon.aws.operators.batch' \
    "apache-airflow==$AIRFLOW_VERSION" "apache-airflow-providers-amazon==$AIRFLOW_AMAZON_VERSION"
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
  ensure "python-images-$PYTHON_TAG-$PYTHON_IMAGE_REVISION-snakemake-$SNAKEMAKE_VERSION" "$python_image" 2 python_image verify
}
build_karpenter() { ensure "karpenter-$KARPENTER_VERSION" "$karpenter_bin" 10 go_karpenter "karpenter --help"; }
build_kueue() { ensure "kueue-$KUEUE_VERSION" "$kueue_bin" 10 go_kueue "kueue --help"; }

all() {
  local start=$SECONDS
  runs "$k8s_bin" "kube-apiserver --version" || log "the first build of the control plane takes about 15 min on 2 cores (etcd, kwok, Kubernetes, moto, helm; ~2 GB of Go modules); later runs reuse $cache"
  build_etcd; build_kwok; build_k8s; build_moto; build_aws_clients; build_snakemake; build_metaflow; build_airflow; build_helm
  [ $((SECONDS - start)) -lt 5 ] || log "test bed ready in $((SECONDS - start)) s"
}

case "${1:-all}" in
  all) all ;;
  k8s) build_k8s ;; etcd) build_etcd ;; kwok) build_kwok ;; moto) build_moto ;; aws-clients) build_aws_clients ;; snakemake) build_snakemake ;;
  metaflow) build_metaflow ;; airflow) build_airflow ;; helm) build_helm ;;
  kueue) build_kueue ;;
  real-node) build_real_node ;;
  karpenter) build_karpenter ;;
  paths) echo "K8S_BIN=$k8s_bin"; echo "ETCD_BIN=$etcd_bin"; echo "KWOK_BIN=$kwok_bin"; echo "MOTO_VENV=$moto_venv"
         echo "AWS_CLIENTS_VENV=$clients_venv"; echo "SNAKEMAKE_VENV=$snakemake_venv"
         echo "METAFLOW_VENV=$metaflow_venv"; echo "AIRFLOW_VENV=$airflow_venv"
         echo "HELM_BIN=$helm_bin"; echo "KUEUE_BIN=$kueue_bin"
         echo "KARPENTER_BIN=$karpenter_bin"; echo "KUBELET_BIN=$kubelet_bin"; echo "NODE_IMAGES=$node_images"
         echo "PYTHON_IMAGES=$python_image" ;;
  *) echo "usage: $0 [all|k8s|etcd|kwok|moto|aws-clients|snakemake|metaflow|airflow|helm|kueue|karpenter|real-node|paths]" >&2; exit 2 ;;
esac
