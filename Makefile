# Barge: `make demo` to see it run, `make test` for everything CI checks.
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: all build test fmt-check clippy unit integration crds generate static bench bench-core bench-memory bench-cluster bench-api bench-cost chaos demo demo-down cluster-up cluster-down bench

all: build

build:
	$(CARGO) build --release

## Everything CI checks: format, lints, unit tests, then integration tests on a real local
## control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok) and moto.
test: fmt-check clippy unit integration

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --all-targets -- -D warnings

unit:
	$(CARGO) test --lib --bins

integration:
	$(CARGO) build --tests --bin barge
	hack/with-cluster.sh $(CARGO) test --test '*' -- --test-threads=4

## Regenerate crds/ (and the chart's copy) from the Rust types, deploy/ from the chart, and
## the Argo CD health-check ConfigMap from its Lua scripts.
crds generate:
	hack/generate.sh

demo:
	hack/demo.sh

demo-down:
	hack/cluster.sh down

cluster-up:
	hack/cluster.sh up

cluster-down:
	hack/cluster.sh down

## The static binary the container image ships (see Dockerfile).
static:
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --release --locked \
	  --target x86_64-unknown-linux-gnu --bin barge

## Criterion benches of the pure core, then the cluster benchmark on a fresh local cluster:
## ceiling vs batch/v1 vs Kueue vs Barge, BENCH_JOBS (default 10000) one-pod jobs, then the
## turnaround scenario (a saturated 64-vCPU environment). The Job controller gets the same
## generous client limits as the scheduler (QPS 200, burst 400); Kueue is built on first use
## (BENCH_KUEUE=0 leaves it out, BENCH_TURNAROUND=0 the turnaround).
## BENCH_HOLD=100000 also holds that many BatchJobs for the operator's memory and pass time.
BENCH_JOBS ?= 10000
BENCH_HOLD ?= 0
bench: bench-core bench-memory bench-api bench-cluster bench-cost

bench-core:
	$(CARGO) bench --bench core

bench-memory:
	$(CARGO) bench --bench memory

## The AWS Batch API under 16 concurrent clients, beside raw BatchJob creates, on a fresh cluster.
bench-api:
	BARGE_REAL_NODE=0 BARGE_CLUSTER_DIR=$(CURDIR)/.barge/bench-api hack/with-cluster.sh $(CARGO) bench --bench batch_api

## What the compute costs (see benches/cost.rs): one seeded trace replayed at once against
## Barge's four allocation strategies and batch/v1 with Karpenter (kwok provider, built on
## first use), on a fresh local cluster: bench/results/cost.md, cost.csv, cost-series.csv,
## cost.png. COST_JOBS (240), COST_WINDOW (180 s), COST_SEED (1), COST_INTERRUPTIONS (6 per
## Spot node-hour), COST_KARPENTER=0 leaves Karpenter out.
bench-cost:
	[ "$${COST_KARPENTER:-1}" = 0 ] || hack/cluster/build.sh karpenter
	BARGE_REAL_NODE=0 BARGE_CLUSTER_DIR=$(CURDIR)/.barge/bench-cost hack/with-cluster.sh $(CARGO) bench --bench cost
	hack/cost-plot.sh

## Six failure scenarios on a fresh local cluster with moto (see benches/chaos.rs):
## bench/results/chaos.md and .csv. CHAOS_JOBS (2000), CHAOS_EC2_JOBS (200), CHAOS_ONLY=1,3.
CHAOS_JOBS ?= 2000
CHAOS_EC2_JOBS ?= 200
chaos:
	BARGE_REAL_NODE=0 BARGE_CLUSTER_DIR=$(CURDIR)/.barge/chaos CHAOS_JOBS=$(CHAOS_JOBS) CHAOS_EC2_JOBS=$(CHAOS_EC2_JOBS) \
	  hack/with-cluster.sh $(CARGO) bench --bench chaos

bench-cluster:
	BARGE_REAL_NODE=0 BARGE_CLUSTER_DIR=$(CURDIR)/.barge/bench-cluster KCM_QPS=200 KCM_BURST=400 BENCH_JOBS=$(BENCH_JOBS) BENCH_HOLD=$(BENCH_HOLD) \
	  hack/with-cluster.sh $(CARGO) bench --bench cluster
	[ "$(BENCH_JOBS)" = 0 ] || hack/bench-plot.sh $(BENCH_JOBS)
