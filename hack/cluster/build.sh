#!/usr/bin/env bash
# Builds the local control plane (kube-apiserver, kube-scheduler, kube-controller-manager,
# kubectl, etcd, kwok) from the Go module proxy into a cache keyed by version, and the moto
# venv. A warm cache makes this a no-op.
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
helm_bin="$cache/helm-$HELM_VERSION"

log() { printf '[build] %s\n' "$*" >&2; }

build_k8s() {
  [ -x "$k8s_bin/kube-apiserver" ] && [ -x "$k8s_bin/kubectl" ] && return
  log "building Kubernetes $K8S_VERSION (several minutes when cold)"
  local minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  local tmp="$k8s_bin.tmp"; rm -rf "$tmp"; mkdir -p "$tmp"
  (cd "$here/k8s" && go build -trimpath -o "$tmp/" \
    -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION \
      -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor \
      -X k8s.io/component-base/version.gitTreeState=clean \
      -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION \
      -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-scheduler \
    k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kubectl)
  rm -rf "$k8s_bin"; mv "$tmp" "$k8s_bin"
}

build_etcd() {
  [ -x "$etcd_bin/etcd" ] && return
  log "building etcd $ETCD_VERSION"
  mkdir -p "$etcd_bin.tmp"
  (cd "$here/etcd" && go build -trimpath -ldflags "-s -w" -o "$etcd_bin.tmp/etcd" .)
  rm -rf "$etcd_bin"; mv "$etcd_bin.tmp" "$etcd_bin"
}

build_kwok() {
  [ -x "$kwok_bin/kwok" ] && return
  log "building kwok $KWOK_VERSION"
  mkdir -p "$kwok_bin.tmp"
  (cd "$here/kwok" && go build -trimpath -ldflags "-s -w" -o "$kwok_bin.tmp/kwok" sigs.k8s.io/kwok/cmd/kwok)
  rm -rf "$kwok_bin"; mv "$kwok_bin.tmp" "$kwok_bin"
}

build_helm() {
  [ -x "$helm_bin/helm" ] && return
  log "building helm $HELM_VERSION"
  mkdir -p "$helm_bin.tmp"
  (cd "$here/helm" && go build -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
    -o "$helm_bin.tmp/helm" helm.sh/helm/v3/cmd/helm)
  rm -rf "$helm_bin"; mv "$helm_bin.tmp" "$helm_bin"
}

build_moto() {
  [ -f "$moto_venv/.complete" ] && return
  log "installing moto $MOTO_VERSION into a venv"
  rm -rf "$moto_venv"
  python3 -m venv "$moto_venv"
  "$moto_venv/bin/pip" install --quiet --disable-pip-version-check "moto[server,ec2]==$MOTO_VERSION"
  touch "$moto_venv/.complete"
}

case "${1:-all}" in
  all) build_etcd; build_kwok; build_k8s; build_moto; build_helm ;;
  k8s) build_k8s ;; etcd) build_etcd ;; kwok) build_kwok ;; moto) build_moto ;; helm) build_helm ;;
  paths) echo "K8S_BIN=$k8s_bin"; echo "ETCD_BIN=$etcd_bin"; echo "KWOK_BIN=$kwok_bin"; echo "MOTO_VENV=$moto_venv"
         echo "HELM_BIN=$helm_bin" ;;
  *) echo "usage: $0 [all|k8s|etcd|kwok|moto|helm|paths]" >&2; exit 2 ;;
esac
