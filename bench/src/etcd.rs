//! etcd's side: Debian's `etcd` as a single-member cluster on a temp data dir, with its default
//! durability (the WAL is fsynced before a put is acknowledged), driven by `etcd-client`.

use crate::{
    load::Backend,
    payload,
    process::{self, ChildGuard},
};
use anyhow::{Context as _, bail};
use etcd_client::{Client, EventType, KvClient, WatchOptions};
use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};
use tokio::{sync::mpsc, task::JoinHandle};

/// Keys live under this prefix, like Kubernetes' `/registry/<resource>/<name>`.
const PREFIX: &str = "/hanul-bench/images/";

/// A running etcd. Killed on drop.
pub struct Etcd {
    pub url: String,
    pub version: String,
    object_size: usize,
    _child: ChildGuard,
    _dir: tempfile::TempDir,
}

impl Etcd {
    pub async fn start(bin: &Path, object_size: usize) -> anyhow::Result<Etcd> {
        if !bin.exists() {
            bail!(
                "no etcd at {} (Debian: apt-get install etcd-server; or pass --etcd-bin)",
                bin.display()
            );
        }
        let version = Command::new(bin)
            .arg("--version")
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim_start_matches("etcd Version: ")
                    .to_string()
            })
            .unwrap_or_default();
        let dir = tempfile::Builder::new().prefix("etcd-bench-").tempdir()?;
        let client_url = format!("http://127.0.0.1:{}", process::free_port()?);
        let peer_url = format!("http://127.0.0.1:{}", process::free_port()?);
        let mut cmd = Command::new(bin);
        cmd.args(["--name", "bench"])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("bench={peer_url}")])
            .args(["--log-level", "warn"]);
        let mut child = ChildGuard::spawn("etcd", cmd, &dir.path().join("etcd.log"))?;
        let url = client_url.clone();
        process::wait_ready(&mut child, Duration::from_secs(30), || {
            let url = url.clone();
            async move {
                let mut c = Client::connect([url], None).await?;
                c.get("/health-probe", None).await?;
                Ok(())
            }
        })
        .await?;
        Ok(Etcd {
            url: client_url,
            version,
            object_size,
            _child: child,
            _dir: dir,
        })
    }
}

impl Backend for Etcd {
    type Conn = KvClient;

    async fn connect(&self) -> anyhow::Result<KvClient> {
        let client = Client::connect([self.url.as_str()], None)
            .await
            .with_context(|| format!("connecting to etcd at {}", self.url))?;
        Ok(client.kv_client())
    }

    async fn create(&self, conn: &mut KvClient, name: &str) -> anyhow::Result<()> {
        conn.put(
            format!("{PREFIX}{name}"),
            payload::image_bytes(name, self.object_size),
            None,
        )
        .await
        .with_context(|| format!("putting {name}"))?;
        Ok(())
    }

    async fn watch(
        &self,
        events: mpsc::UnboundedSender<(String, Instant)>,
    ) -> anyhow::Result<JoinHandle<()>> {
        let mut client = Client::connect([self.url.as_str()], None).await?;
        let mut stream = client
            .watch(PREFIX, Some(WatchOptions::new().with_prefix()))
            .await?;
        // The first response confirms the watch was created.
        match stream.message().await? {
            Some(resp) if resp.created() => {}
            other => bail!("etcd did not confirm the watch: {other:?}"),
        }
        Ok(tokio::spawn(async move {
            // The client owns the connection the stream runs on.
            let _client = client;
            while let Ok(Some(resp)) = stream.message().await {
                let at = Instant::now();
                for ev in resp.events() {
                    if ev.event_type() != EventType::Put {
                        continue;
                    }
                    let Some(kv) = ev.kv() else { continue };
                    let key = String::from_utf8_lossy(kv.key());
                    let name = key.strip_prefix(PREFIX).unwrap_or(&key).to_string();
                    if events.send((name, at)).is_err() {
                        return;
                    }
                }
            }
        }))
    }
}
