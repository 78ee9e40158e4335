#!/usr/bin/env bash
# Runs a command against a fresh local cluster and always tears the cluster down after,
# also when the command fails or is interrupted.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
export BARGE_CLUSTER_DIR=${BARGE_CLUSTER_DIR:-$repo/.barge/test-cluster}
trap '"$repo/hack/cluster.sh" down' EXIT
"$repo/hack/cluster.sh" down >/dev/null 2>&1 || true
# Assigned first: a cluster that fails to start stops the run here.
env_lines=$("$repo/hack/cluster.sh" up)
eval "$env_lines"
"$@"
