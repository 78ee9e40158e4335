//! The `barge` command: the operator (`barge run`) and the user commands (see `barge --help`).

// The system allocator, not mimalloc: holding 100,000 jobs the operator peaked at 230 MiB
// with it against 247 MiB with mimalloc, with less CPU and shorter scheduling passes (one
// `make bench-cluster BENCH_JOBS=0 BENCH_HOLD=100000` each, on the same code).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    barge::cli::main().await
}
