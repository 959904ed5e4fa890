//! hanul's side: the real `hanul server` binary on a temp data dir, driven by the client library.

use crate::{
    load::Backend,
    payload,
    process::{self, ChildGuard},
};
use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use hanul_proto::{Client, Kind, v1::EventType};
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    sync::mpsc,
    task::JoinHandle,
};

/// A running `hanul server` and how to reach it. Killed on drop.
pub struct Hanul {
    pub url: String,
    pub metrics: SocketAddr,
    token: String,
    object_size: usize,
    // Dropped before the data dir: fields drop in declaration order.
    _child: ChildGuard,
    _dir: tempfile::TempDir,
}

impl Hanul {
    /// Starts `bin server` on a new temp data dir and waits until it serves.
    pub async fn start(bin: &Path, object_size: usize) -> anyhow::Result<Hanul> {
        if !bin.exists() {
            bail!(
                "no hanul binary at {} (build it: cargo build --release -p hanul; or pass \
                 --hanul-bin / HANUL_BIN)",
                bin.display()
            );
        }
        // HANUL_BENCH_KEEP=1 keeps the server's directory (its log, the store) for a look after.
        let dir = tempfile::Builder::new()
            .prefix("hanul-bench-")
            .disable_cleanup(std::env::var_os("HANUL_BENCH_KEEP").is_some())
            .tempdir()?;
        let data = dir.path().join("data");
        let metrics: SocketAddr = format!("127.0.0.1:{}", process::free_port()?).parse()?;
        let mut cmd = Command::new(bin);
        cmd.arg("server")
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen", "127.0.0.1:0"])
            .arg("--metrics-listen")
            .arg(metrics.to_string());
        // HANUL_BENCH_SERVER_ARGS: more `hanul server` flags, e.g. `--store memory` for the
        // ceiling of the API path without durability.
        if let Ok(extra) = std::env::var("HANUL_BENCH_SERVER_ARGS") {
            cmd.args(extra.split_whitespace());
        }
        let mut child = ChildGuard::spawn("hanul server", cmd, &dir.path().join("server.log"))?;
        let endpoint = data.join("endpoint");
        let token_file = data.join("admin.token");
        let (url, token) = process::wait_ready(&mut child, Duration::from_secs(30), || async {
            let url = read_line(&endpoint, true)?;
            let token = read_line(&token_file, false)?;
            Ok((url, token))
        })
        .await?;
        // The endpoint is written once the server serves; one call proves auth works too.
        let client = Client::connect(&url, &token).await?;
        client
            .list(Some(Kind::Image), "")
            .await
            .context("listing images on the new server")?;
        Ok(Hanul {
            url,
            metrics,
            token,
            object_size,
            _child: child,
            _dir: dir,
        })
    }

    /// The server's data dir (its tokens: `join.token` for agents).
    pub fn data_dir(&self) -> std::path::PathBuf {
        self._dir.path().join("data")
    }

    /// The server's own log (stdout and stderr).
    pub fn log_path(&self) -> std::path::PathBuf {
        self._dir.path().join("server.log")
    }

    /// A client with the admin token.
    pub async fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::connect(&self.url, &self.token).await?)
    }

    /// The server's Prometheus text.
    pub async fn scrape(&self) -> anyhow::Result<String> {
        let mut stream = tokio::net::TcpStream::connect(self.metrics).await?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await?;
        let mut text = String::new();
        stream.read_to_string(&mut text).await?;
        match text.split_once("\r\n\r\n") {
            Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_string()),
            _ => bail!(
                "unexpected /metrics answer: {}",
                text.lines().next().unwrap_or("")
            ),
        }
    }
}

/// The first line of a file the server writes; `whole` waits for its trailing newline too (the
/// endpoint file is written in one go, but not atomically).
fn read_line(path: &PathBuf, whole: bool) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let line = text.trim();
    if line.is_empty() || (whole && !text.ends_with('\n')) {
        bail!("{} is not complete yet", path.display());
    }
    Ok(line.to_string())
}

impl Backend for Hanul {
    type Conn = Client;

    async fn connect(&self) -> anyhow::Result<Client> {
        Ok(Client::connect(&self.url, &self.token).await?)
    }

    async fn create(&self, conn: &mut Client, name: &str) -> anyhow::Result<()> {
        conn.create(payload::image(name, self.object_size))
            .await
            .with_context(|| format!("creating image {name}"))?;
        Ok(())
    }

    async fn watch(
        &self,
        events: mpsc::UnboundedSender<(String, Instant)>,
    ) -> anyhow::Result<JoinHandle<()>> {
        let client = self.connect().await?;
        let mut stream = client.watch(Some(Kind::Image), "", 0).await?;
        Ok(tokio::spawn(async move {
            while let Some(Ok(ev)) = stream.next().await {
                let at = Instant::now();
                if ev.r#type() != EventType::Added {
                    continue;
                }
                let Some(object) = ev.object else { continue };
                if events.send((object.name().to_string(), at)).is_err() {
                    return;
                }
            }
        }))
    }
}

/// One Prometheus histogram (its buckets, sum and count), for the difference between scrapes.
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    /// Upper bound (seconds) and cumulative count.
    pub buckets: Vec<(f64, f64)>,
    pub sum: f64,
    pub count: f64,
}

impl Histogram {
    /// The series `name` whose labels contain `labels` (e.g. `method="Create"`; empty: any).
    pub fn parse(text: &str, name: &str, labels: &str) -> Histogram {
        let mut h = Histogram::default();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix(name) else {
                continue;
            };
            let (series, value) = match rest.rsplit_once(' ') {
                Some((s, v)) => (s, v.parse::<f64>().unwrap_or(0.0)),
                None => continue,
            };
            let (suffix, label_text) = match series.split_once('{') {
                Some((s, l)) => (s, l.trim_end_matches('}')),
                None => (series, ""),
            };
            let ours = label_text
                .split(',')
                .filter(|l| !l.starts_with("le="))
                .collect::<Vec<_>>()
                .join(",");
            if !labels.is_empty() && !ours.contains(labels) {
                continue;
            }
            match suffix {
                "_sum" => h.sum += value,
                "_count" => h.count += value,
                "_bucket" => {
                    let le = label_text
                        .split(',')
                        .find_map(|l| l.strip_prefix("le=\""))
                        .map(|v| v.trim_end_matches('"'))
                        .and_then(|v| v.parse::<f64>().ok())
                        .unwrap_or(f64::INFINITY);
                    match h.buckets.iter_mut().find(|(b, _)| *b == le) {
                        Some((_, c)) => *c += value,
                        None => h.buckets.push((le, value)),
                    }
                }
                _ => {}
            }
        }
        h.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        h
    }

    /// What was observed between `before` and `self`.
    pub fn since(&self, before: &Histogram) -> Histogram {
        let buckets = self
            .buckets
            .iter()
            .map(|&(le, c)| {
                let old = before
                    .buckets
                    .iter()
                    .find(|(b, _)| *b == le)
                    .map_or(0.0, |(_, c)| *c);
                (le, c - old)
            })
            .collect();
        Histogram {
            buckets,
            sum: self.sum - before.sum,
            count: self.count - before.count,
        }
    }

    pub fn mean_ms(&self) -> f64 {
        if self.count > 0.0 {
            self.sum / self.count * 1000.0
        } else {
            f64::NAN
        }
    }

    /// The upper bound of the bucket holding quantile `q`, in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        let want = q * self.count;
        self.buckets
            .iter()
            .find(|(_, c)| *c >= want && *c > 0.0)
            .map_or(f64::NAN, |(le, _)| le * 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# TYPE x histogram
x_sum{method=\"Create\"} 0.5
x_count{method=\"Create\"} 10
x_bucket{le=\"0.001\",method=\"Create\"} 2
x_bucket{le=\"0.01\",method=\"Create\"} 10
x_bucket{le=\"+Inf\",method=\"Create\"} 10
x_sum{method=\"Get\"} 9
x_count{method=\"Get\"} 9
";

    #[test]
    fn a_histogram_is_read_for_one_label_set() {
        let h = Histogram::parse(TEXT, "x", "method=\"Create\"");
        assert_eq!(h.count, 10.0);
        assert_eq!(h.mean_ms(), 50.0);
        assert_eq!(h.quantile_ms(0.5), 10.0);
        assert_eq!(h.quantile_ms(0.1), 1.0);
    }
}
