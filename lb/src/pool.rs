//! Idle keep-alive connections to targets, one pool per worker thread.
//!
//! A connection is checked out for one request and checked back in the moment its response
//! body has been read to the end (HTTP/1.1: one request at a time). A connection the target
//! closed while idle is noticed at checkout when the worker's reactor has seen it (no system
//! call), else by the exchange, which then reports the request unanswered so that it can go
//! elsewhere.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::upstream::{self, Conn};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle connections kept per target and worker.
const MAX_IDLE: usize = 512;

#[derive(Default)]
pub(crate) struct Pool {
    idle: Mutex<HashMap<String, Vec<Conn>>>,
}

impl Pool {
    /// An idle connection to `address`, else a new one.
    pub async fn checkout(&self, address: &str) -> Result<Conn, String> {
        loop {
            let next = self
                .idle
                .lock()
                .unwrap()
                .get_mut(address)
                .and_then(Vec::pop);
            let Some(conn) = next else { break };
            if conn.is_open() {
                return Ok(conn);
            }
        }
        match tokio::time::timeout(CONNECT_TIMEOUT, upstream::connect(address)).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(format!("cannot connect to {address}: {e}")),
            Err(_) => Err(format!("connecting to {address} timed out")),
        }
    }

    /// Keeps a connection whose response was read to its end for the next request.
    pub fn checkin(&self, address: &str, conn: Conn) {
        let mut idle = self.idle.lock().unwrap();
        match idle.get_mut(address) {
            Some(list) if list.len() < MAX_IDLE => list.push(conn),
            Some(_) => {}
            None => {
                idle.insert(address.to_owned(), vec![conn]);
            }
        }
    }

    /// Forgets the idle connections of targets not in `keep`.
    pub fn retain(&self, keep: &dyn Fn(&str) -> bool) {
        self.idle.lock().unwrap().retain(|address, _| keep(address));
    }
}
