//! The `barge` command: the operator (`barge run`) and the user commands (see `barge --help`).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    barge::cli::main().await
}
