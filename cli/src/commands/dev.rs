//! `hanul dev`: everything on one machine with no setup: the server on the embedded store in a
//! local data dir, the CLI config written so that plain `hanul get ...` works from another
//! terminal, and a short tour printed.

use super::server::{self, StoreArg};
use crate::config;
use std::{net::SocketAddr, path::PathBuf, time::Duration};

/// Runs a local development cluster.
#[derive(Clone, Debug, clap::Args)]
pub struct Args {
    /// Where to keep the data; default ~/.local/share/hanul (or a temp dir with --temp).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Keep the data in a temp dir that is removed on exit.
    #[arg(long, conflicts_with = "data_dir")]
    pub temp: bool,
    #[arg(long, default_value = "127.0.0.1:7443")]
    pub listen: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:7444")]
    pub metrics_listen: SocketAddr,
}

fn default_data_dir() -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("hanul")
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let temp = if args.temp {
        Some(tempfile::tempdir()?)
    } else {
        None
    };
    let data_dir = match (&temp, &args.data_dir) {
        (Some(t), _) => t.path().to_path_buf(),
        (None, Some(d)) => d.clone(),
        (None, None) => default_data_dir(),
    };
    let server_args = server::Args {
        data_dir: data_dir.clone(),
        listen: args.listen,
        metrics_listen: args.metrics_listen,
        store: StoreArg::Sled,
        no_controllers: false,
        with_agent: true,
        zone: "az-a".into(),
        node_grace_period: Duration::from_secs(15),
        spot_notice: Duration::from_secs(120),
        terminated_retention: hanul_controllers::terminated::DEFAULT_RETENTION,
    };
    let running = server::start(&server_args).await?;
    let url = running.server.url();
    let token_file = data_dir.join(hanul_apiserver::auth::ADMIN_TOKEN_FILE);
    config::write_config(&url, &token_file)?;
    println!(
        "hanul dev is running.\n\
         \n  server     {url}\n  data       {data}\n  metrics    http://{metrics}/metrics\n  CLI config {cfg} (plain `hanul ...` commands now use this server)\n\
         \nTry, from another terminal:\n\
         \n  hanul get nodes -o wide\n  hanul get instancetypes\n  hanul apply -f deploy/examples/web.yaml\n  hanul get instances -o wide\n  hanul describe image web-v1\n  hanul get instances -w\n\
         \nCtrl-C stops it{keep}.",
        data = data_dir.display(),
        metrics = args.metrics_listen,
        cfg = config::config_path().display(),
        keep = if temp.is_some() {
            " and removes the temp data"
        } else {
            "; the data stays for next time"
        },
    );
    server::shutdown_signal().await;
    running.shutdown().await?;
    drop(temp);
    Ok(())
}
