//! What the run prints: progress lines, the comparison table, machine facts, server figures.

use crate::{BackendResult, hanul::Histogram};
use serde::Serialize;

/// The machine the numbers come from.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub mem_total: String,
    pub kernel: String,
    pub temp_dir: String,
    pub temp_fs: String,
}

impl Machine {
    pub fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let temp_dir = std::env::temp_dir();
        Machine {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model: field(&cpuinfo, "model name"),
            mem_total: field(&meminfo, "MemTotal"),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
            temp_fs: filesystem_of(&temp_dir),
            temp_dir: temp_dir.display().to_string(),
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "machine: {} CPUs ({}), {} memory, Linux {}; data dirs in {} ({})",
            self.cpus, self.cpu_model, self.mem_total, self.kernel, self.temp_dir, self.temp_fs
        )
    }
}

fn field(text: &str, name: &str) -> String {
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == name).then(|| v.trim().to_string())
        })
        .unwrap_or_else(|| "?".into())
}

/// The device and type of the mount holding `path` (the longest matching mount point).
fn filesystem_of(path: &std::path::Path) -> String {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (dev, at, fs) = (f.next()?, f.next()?, f.next()?);
            path.starts_with(at)
                .then(|| (at.len(), format!("{dev} {fs}")))
        })
        .max_by_key(|(n, _)| *n)
        .map_or_else(|| "?".into(), |(_, s)| s)
}

/// Where lines go: stdout, or stderr when stdout carries JSON.
pub struct Out {
    json: bool,
}

impl Out {
    pub fn new(json: bool) -> Out {
        Out { json }
    }

    pub fn line(&mut self, s: &str) {
        if self.json {
            eprintln!("{s}");
        } else {
            println!("{s}");
        }
    }

    /// The comparison table and the watch lines.
    pub fn table(&mut self, hanul: Option<&BackendResult>, etcd: Option<&BackendResult>) {
        self.line("");
        self.line(
            "clients | hanul creates/s |   p50 ms |   p99 ms | etcd puts/s |   p50 ms |   p99 ms | ratio",
        );
        self.line(
            "------- | --------------- | -------- | -------- | ----------- | -------- | -------- | -----",
        );
        let levels: Vec<usize> = hanul
            .or(etcd)
            .map(|r| r.loads.iter().map(|l| l.clients).collect())
            .unwrap_or_default();
        for clients in levels {
            let h = hanul.and_then(|r| r.loads.iter().find(|l| l.clients == clients));
            let e = etcd.and_then(|r| r.loads.iter().find(|l| l.clients == clients));
            let cell = |v: Option<f64>, w: usize, p: usize| match v {
                Some(v) => format!("{v:>w$.p$}"),
                None => format!("{:>w$}", "-"),
            };
            let ratio = match (h, e) {
                (Some(h), Some(e)) if e.per_second > 0.0 => {
                    format!("{:.2}x", h.per_second / e.per_second)
                }
                _ => "-".into(),
            };
            self.line(&format!(
                "{clients:>7} | {} | {} | {} | {} | {} | {} | {ratio}",
                cell(h.map(|l| l.per_second), 15, 0),
                cell(h.map(|l| l.latency.p50_ms), 8, 2),
                cell(h.map(|l| l.latency.p99_ms), 8, 2),
                cell(e.map(|l| l.per_second), 11, 0),
                cell(e.map(|l| l.latency.p50_ms), 8, 2),
                cell(e.map(|l| l.latency.p99_ms), 8, 2),
            ));
        }
        self.line("");
        for r in [hanul, etcd].into_iter().flatten() {
            match (&r.watch, &r.watch_error) {
                (Some(w), _) => self.line(&format!(
                    "watch delivery {:<5}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} writes at \
                     {}/s, {} missed)",
                    r.name,
                    w.delivery.p50_ms,
                    w.delivery.p99_ms,
                    w.delivery.max_ms,
                    w.writes,
                    w.rate,
                    w.missed
                )),
                (None, Some(e)) => self.line(&format!("watch delivery {:<5}: failed: {e}", r.name)),
                (None, None) => {}
            }
        }
        if etcd.is_none() {
            self.line("etcd: not measured (see above)");
        }
        if hanul.is_some() || etcd.is_some() {
            self.line(&format!("versions: {}", version_line(hanul, etcd)));
        }
    }
}

fn version_line(hanul: Option<&BackendResult>, etcd: Option<&BackendResult>) -> String {
    [hanul, etcd]
        .into_iter()
        .flatten()
        .map(|r| format!("{}: {}", r.name, r.version))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Server-side figures for one level, from the difference of two /metrics scrapes.
pub fn server_figures(before: &str, after: &str) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    let write = "hanul_apiserver_store_write_duration_seconds";
    let w = Histogram::parse(after, write, "").since(&Histogram::parse(before, write, ""));
    out.push(("store_write_count".into(), w.count));
    out.push(("store_write_mean_ms".into(), w.mean_ms()));
    out.push(("store_write_p50_ms_le".into(), w.quantile_ms(0.5)));
    out.push(("store_write_p99_ms_le".into(), w.quantile_ms(0.99)));
    let req = "hanul_apiserver_request_duration_seconds";
    let c = Histogram::parse(after, req, "Create").since(&Histogram::parse(before, req, "Create"));
    out.push(("create_handler_mean_ms".into(), c.mean_ms()));
    out.push(("create_handler_p99_ms_le".into(), c.quantile_ms(0.99)));
    out
}

pub fn format_figures(figures: &[(String, f64)]) -> String {
    figures
        .iter()
        .map(|(k, v)| format!("{k}={v:.2}"))
        .collect::<Vec<_>>()
        .join(" ")
}
