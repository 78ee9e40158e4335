# Barge: `make demo` to see it run, `make test` for everything CI checks.
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: all build test fmt-check clippy unit integration crds crds-check demo demo-down cluster-up cluster-down bench

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

## Regenerate crds/ from the Rust types.
crds:
	$(CARGO) run --quiet --bin barge -- crd > crds/barge.dev.yaml

demo:
	hack/demo.sh

demo-down:
	hack/cluster.sh down

cluster-up:
	hack/cluster.sh up

cluster-down:
	hack/cluster.sh down

bench:
	$(CARGO) bench --bench core
