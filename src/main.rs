//! The `barge` command: the operator (`barge run`) and the user commands (see `barge --help`).

/// mimalloc returns freed memory to the system and keeps fragmentation low: the operator
/// holds every job in memory, and passes over a large backlog allocate in bursts.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    barge::cli::main().await
}
