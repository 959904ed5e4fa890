//! Keep-alive connections to targets, one pool per worker thread.
//!
//! A connection is checked out for one request and checked back in the moment its response
//! body has been read to the end (so HTTP/1.1's one-request-at-a-time holds); a connection the
//! target closed is noticed at checkout and dropped. Connecting and sending are separate steps
//! so that a request that never left (refused connection, a pooled connection closed under it)
//! comes back to the caller and can go to another target.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Request;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::debug;

use crate::http::ProxyBody;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle connections kept per target and worker.
const MAX_IDLE: usize = 512;

pub(crate) type Sender = SendRequest<ProxyBody>;

#[derive(Default)]
pub(crate) struct Pool {
    idle: Mutex<HashMap<String, Vec<Sender>>>,
}

/// Why a request could not be sent; `request` is given back when it never left.
pub(crate) struct SendError {
    pub request: Option<Request<ProxyBody>>,
    pub error: String,
}

impl Pool {
    /// An idle connection to `address` that can take a request now, else a new one.
    pub async fn checkout(&self, address: &str) -> Result<Sender, String> {
        loop {
            let next = self
                .idle
                .lock()
                .unwrap()
                .get_mut(address)
                .and_then(Vec::pop);
            let Some(mut sender) = next else { break };
            if sender.is_closed() {
                continue;
            }
            // Ready unless the connection is still finishing its last response.
            if sender.ready().await.is_ok() {
                return Ok(sender);
            }
        }
        connect(address).await
    }

    /// Gives a connection whose response was read to its end back to the pool.
    pub fn checkin(&self, address: &str, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap();
        match idle.get_mut(address) {
            Some(list) if list.len() < MAX_IDLE => list.push(sender),
            Some(_) => {}
            None => {
                idle.insert(address.to_owned(), vec![sender]);
            }
        }
    }

    /// Forgets the idle connections of targets not in `keep`.
    pub fn retain(&self, keep: &dyn Fn(&str) -> bool) {
        self.idle.lock().unwrap().retain(|address, _| keep(address));
    }
}

async fn connect(address: &str) -> Result<Sender, String> {
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(format!("cannot connect to {address}: {e}")),
        Err(_) => return Err(format!("connecting to {address} timed out")),
    };
    let _ = stream.set_nodelay(true);
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake with {address}: {e}"))?;
    let address = address.to_owned();
    // Runs on the worker that connected, as the requests that use it.
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            debug!(%address, error = %e, "target connection ended with an error");
        }
    });
    Ok(sender)
}

/// Sends `request` on `sender`; a request the connection did not take is given back.
pub(crate) async fn send(
    sender: &mut Sender,
    request: Request<ProxyBody>,
) -> Result<http::Response<hyper::body::Incoming>, SendError> {
    sender.try_send_request(request).await.map_err(|mut e| {
        let request = e.take_message();
        SendError {
            error: e.error().to_string(),
            request,
        }
    })
}

/// What checks a connection back in once its response body ends.
pub(crate) struct Checkin {
    pub pool: Arc<Pool>,
    pub sender: Sender,
}

impl Checkin {
    pub fn done(self, address: &str) {
        self.pool.checkin(address, self.sender);
    }
}
