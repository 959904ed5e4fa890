//! PostgreSQL clients for the database tests and benchmarks: one-off SQL, and a writer that
//! records every commit PostgreSQL acknowledged.
//!
//! A commit counts as acknowledged only when it returned success with no warning: PostgreSQL
//! answers a commit whose wait for its synchronous standby was cancelled with success plus a
//! WARNING ("canceling wait for synchronous replication"), and such a commit may be lost in a
//! failover, which is allowed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio_postgres::{AsyncMessage, Client, NoTls};

/// A connection string for `host:port`.
pub fn conninfo(address: &str, user: &str, password: &str, dbname: &str) -> String {
    let (host, port) = address.rsplit_once(':').unwrap_or((address, "5432"));
    format!(
        "host={host} port={port} user={user} password={password} dbname={dbname} connect_timeout=3"
    )
}

/// A connected client, and a flag raised by any WARNING the server sends on it.
pub async fn connect(conninfo: &str) -> Result<(Client, Arc<AtomicBool>), String> {
    let (client, mut connection) = tokio_postgres::connect(conninfo, NoTls)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let warned = Arc::new(AtomicBool::new(false));
    let flag = warned.clone();
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(m) = messages.next().await {
            match m {
                Ok(AsyncMessage::Notice(n)) if n.severity() == "WARNING" => {
                    flag.store(true, Ordering::SeqCst)
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    Ok((client, warned))
}

/// Runs `sql` (one or more statements) once on a fresh connection, with a deadline.
pub async fn execute(conninfo: &str, sql: &str, timeout: Duration) -> Result<(), String> {
    tokio::time::timeout(timeout, async {
        let (client, warned) = connect(conninfo).await?;
        client
            .batch_execute(sql)
            .await
            .map_err(|e| format!("{sql}: {e}"))?;
        if warned.load(Ordering::SeqCst) {
            return Err(format!("{sql}: answered with a warning"));
        }
        Ok(())
    })
    .await
    .map_err(|_| format!("{sql}: no answer within {timeout:?}"))?
}

/// The first column of the first row of `sql`, as text.
pub async fn query_one(conninfo: &str, sql: &str, timeout: Duration) -> Result<String, String> {
    tokio::time::timeout(timeout, async {
        let (client, _) = connect(conninfo).await?;
        let rows = client
            .simple_query(sql)
            .await
            .map_err(|e| format!("{sql}: {e}"))?;
        for r in rows {
            if let tokio_postgres::SimpleQueryMessage::Row(row) = r {
                return Ok(row.get(0).unwrap_or("").to_owned());
            }
        }
        Err(format!("{sql}: no row"))
    })
    .await
    .map_err(|_| format!("{sql}: no answer within {timeout:?}"))?
}

/// Inserts rows `acked(id)` one commit at a time through `conninfo` (reconnecting after any
/// error), until stopped; keeps the ids of the commits PostgreSQL acknowledged.
#[derive(Clone, Debug, Default)]
pub struct AckedWriter {
    /// Each acknowledged id, with when its acknowledgement arrived and the port of the
    /// PostgreSQL server that acknowledged it (`inet_server_port()`: each member has its own).
    pub acked: Arc<Mutex<Vec<(u64, Instant, u16)>>>,
    pub attempts: Arc<AtomicU64>,
    pub failures: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

/// The table the writer fills.
pub const ACKED_TABLE: &str = "CREATE TABLE IF NOT EXISTS acked (id bigint PRIMARY KEY)";

impl AckedWriter {
    /// Starts writing on its own thread; ids start at `first`.
    pub fn start(conninfo: String, first: u64) -> (AckedWriter, std::thread::JoinHandle<()>) {
        let w = AckedWriter::default();
        let me = w.clone();
        let handle = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(me.run(conninfo, first));
        });
        (w, handle)
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    pub fn acked(&self) -> Vec<u64> {
        self.acked
            .lock()
            .unwrap()
            .iter()
            .map(|(id, ..)| *id)
            .collect()
    }

    /// When the first commit after `t` was acknowledged by a server other than the one on
    /// `not_port`, if one was.
    pub fn first_ack_after(&self, t: Instant, not_port: u16) -> Option<Instant> {
        let acked = self.acked.lock().unwrap();
        let i = acked.partition_point(|(_, at, _)| *at <= t);
        acked[i..]
            .iter()
            .find(|(_, _, port)| *port != not_port)
            .map(|(_, at, _)| *at)
    }

    async fn run(self, conninfo: String, first: u64) {
        let mut next = first;
        while !self.stop.load(Ordering::SeqCst) {
            let Ok(Ok((client, warned))) =
                tokio::time::timeout(Duration::from_secs(3), connect(&conninfo)).await
            else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let server = tokio::time::timeout(
                Duration::from_secs(3),
                client.query_one("SELECT inet_server_port()", &[]),
            )
            .await;
            let Ok(Ok(row)) = server else {
                continue;
            };
            let port = row.get::<_, Option<i32>>(0).unwrap_or(0) as u16;
            while !self.stop.load(Ordering::SeqCst) {
                let id = next;
                next += 1;
                self.attempts.fetch_add(1, Ordering::Relaxed);
                warned.store(false, Ordering::SeqCst);
                let r = tokio::time::timeout(
                    Duration::from_secs(10),
                    client.execute("INSERT INTO acked (id) VALUES ($1)", &[&(id as i64)]),
                )
                .await;
                match r {
                    Ok(Ok(_)) if !warned.load(Ordering::SeqCst) => {
                        self.acked.lock().unwrap().push((id, Instant::now(), port))
                    }
                    _ => {
                        self.failures.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
            }
        }
    }
}

/// The acknowledged ids missing from `acked` on the server at `conninfo`.
pub async fn missing(conninfo: &str, acked: &[u64]) -> Result<Vec<u64>, String> {
    let (client, _) = connect(conninfo).await?;
    let rows = client
        .query("SELECT id FROM acked", &[])
        .await
        .map_err(|e| format!("reading acked: {e}"))?;
    let have: std::collections::HashSet<i64> = rows.iter().map(|r| r.get(0)).collect();
    Ok(acked
        .iter()
        .copied()
        .filter(|id| !have.contains(&(*id as i64)))
        .collect())
}
