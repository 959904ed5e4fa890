use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = hanul_bench::Cli::parse();
    // Dropping the run on Ctrl-C drops its process guards, which kill the servers it started.
    tokio::select! {
        result = hanul_bench::run(cli) => result,
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted"),
    }
}
