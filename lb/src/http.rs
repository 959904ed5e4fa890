//! The application load balancer's listener: an HTTP/1.1 reverse proxy.
//!
//! Each client connection is served by one task on the worker that accepted it: it reads a
//! request head (httparse, into the connection's buffer: headers are spans, never copied), lets
//! the listener's rules pick an action (forward to a target group, a fixed response, a
//! redirect), and for a forward lets the group pick a healthy target (its sticky cookie's if
//! that one is healthy). The request goes to the target over the worker's keep-alive pool with
//! hop-by-hop headers removed, `Host` kept and `X-Forwarded-For`/`-Proto`/`-Port` added; the
//! response head goes back with its hop-by-hop headers removed and the stickiness cookie added,
//! and the body is relayed by its framing (re-chunked for an HTTP/1.1 client when the target
//! closes to end it). A small response leaves in one write.
//!
//! A request is tried on another healthy target when its target refuses the connection or a
//! kept-alive connection was closed before answering (nothing was done), and, as nginx's
//! `proxy_next_upstream error`, when it has no body and an idempotent method and its target
//! fails before answering. The load balancer answers itself with 503 when no target is healthy,
//! 502 when the target fails, 504 when it does not answer in 60 s; `Expect: 100-continue` is
//! answered by the load balancer.
//!
//! Rules and targets are read per request from snapshots the data plane swaps, so changes apply
//! to open connections at their next request without closing them.

use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use http::StatusCode;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::debug;

use crate::config::{Action, ListenerConfig, Stickiness};
use crate::group::{Group, Target};
use crate::pool::Pool;
use crate::rules;
use crate::upstream::{self, Conn};
use crate::wire::{self, BodyReader, Framing, READ_CHUNK, RequestHead, ResponseHead};

/// The cookie an lb_cookie group pins clients with (ELB's is AWSALB).
pub const LB_COOKIE: &str = "HANULLB";
/// The cookie an app_cookie group pins clients with once the target set the app's cookie
/// (ELB's is AWSALBAPP).
pub const APP_COOKIE: &str = "HANULLBAPP";
/// How long a target gets to answer (ELB's idle timeout is 60 s).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How many other targets a failed request without a body is tried on.
const MAX_RETRIES: usize = 3;
/// Output is written once this much has gathered.
const FLUSH_AT: usize = 64 * 1024;

/// What a listener routes with; swapped whole on every change.
#[derive(Clone)]
pub(crate) struct Routes {
    pub config: ListenerConfig,
    pub groups: Arc<HashMap<String, Arc<Group>>>,
}

pub(crate) struct HttpListener {
    pub routes: RwLock<Arc<Routes>>,
    pool: Arc<Pool>,
}

impl HttpListener {
    pub fn new(routes: Routes, pool: Arc<Pool>) -> Self {
        HttpListener {
            routes: RwLock::new(Arc::new(routes)),
            pool,
        }
    }
}

/// Serves one client connection to its end.
pub(crate) async fn serve_connection(
    state: Arc<HttpListener>,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let port = state.routes.read().unwrap().config.port;
    let mut client = Client {
        stream,
        buf: BytesMut::with_capacity(READ_CHUNK),
        ip: peer.ip().to_string(),
        port,
        out: Vec::with_capacity(1024),
    };
    if let Err(e) = state.serve_client(&mut client).await {
        debug!(error = %e, %peer, "client connection ended with an error");
    }
}

/// One client connection.
struct Client {
    stream: TcpStream,
    buf: BytesMut,
    /// For X-Forwarded-For.
    ip: String,
    /// The listener's port, for X-Forwarded-Port and redirects.
    port: u16,
    /// What is about to be written.
    out: Vec<u8>,
}

impl Client {
    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    /// A response the load balancer makes itself. Returns whether the connection stays open.
    async fn respond(
        &mut self,
        req: &RequestHead,
        status: u16,
        content_type: &str,
        body: &[u8],
        extra: &[(&str, &str)],
    ) -> std::io::Result<bool> {
        // A body the client sent that is not read closes the connection after the answer.
        let keep = req.keep_alive() && req.framing() == Framing::Done;
        let reason = StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        let out = &mut self.out;
        let _ = write!(out, "HTTP/1.1 {status} {reason}\r\n");
        out.extend_from_slice(b"server: hanul-elb\r\ncontent-type: ");
        out.extend_from_slice(content_type.as_bytes());
        let _ = write!(out, "\r\ncontent-length: {}\r\n", body.len());
        for (k, v) in extra {
            let _ = write!(out, "{k}: {v}\r\n");
        }
        connection_header(out, req.http10, keep);
        out.extend_from_slice(b"\r\n");
        if req.method != http::Method::HEAD {
            out.extend_from_slice(body);
        }
        self.flush().await?;
        Ok(keep)
    }

    async fn error(&mut self, req: &RequestHead, status: u16, why: &str) -> std::io::Result<bool> {
        let reason = StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        let body = format!("{status} {reason}: {why}\n");
        self.respond(
            req,
            status,
            "text/plain; charset=utf-8",
            body.as_bytes(),
            &[],
        )
        .await
    }
}

/// `connection: close` when the connection ends, `keep-alive` for an HTTP/1.0 client that stays.
fn connection_header(out: &mut Vec<u8>, http10: bool, keep: bool) {
    if !keep {
        out.extend_from_slice(b"connection: close\r\n");
    } else if http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
}

impl HttpListener {
    async fn serve_client(&self, client: &mut Client) -> Result<(), String> {
        loop {
            let req = match wire::read_request(&mut client.stream, &mut client.buf).await {
                Ok(Some(req)) => req,
                Ok(None) => return Ok(()),
                Err(e) => {
                    let _ = client
                        .stream
                        .write_all(b"HTTP/1.1 400 Bad Request\r\nserver: hanul-elb\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .await;
                    return Err(e);
                }
            };
            let keep = self.handle(client, req).await.map_err(|e| e.to_string())?;
            if !keep {
                return Ok(());
            }
        }
    }

    /// One request; whether the connection stays open.
    async fn handle(&self, client: &mut Client, req: RequestHead) -> std::io::Result<bool> {
        let routes = self.routes.read().unwrap().clone();
        let group = match rules::route(&routes.config.rules, req.host(), req.path()) {
            None => &routes.config.default_group,
            Some(Action::Forward(group)) => group,
            Some(Action::Fixed {
                status,
                content_type,
                body,
            }) => {
                let ct = if content_type.is_empty() {
                    "text/plain"
                } else {
                    content_type
                };
                return client
                    .respond(&req, *status, ct, body.as_bytes(), &[])
                    .await;
            }
            Some(redirect @ Action::Redirect { .. }) => {
                let (status, location) = redirect_to(redirect, &req, client.port);
                return client
                    .respond(&req, status, "text/plain", b"", &[("location", &location)])
                    .await;
            }
        };
        match routes.groups.get(group) {
            Some(group) => self.forward(client, group, req).await,
            None => {
                client
                    .error(&req, 503, "the target group does not exist")
                    .await
            }
        }
    }

    async fn forward(
        &self,
        client: &mut Client,
        group: &Arc<Group>,
        req: RequestHead,
    ) -> std::io::Result<bool> {
        group.metrics.request();
        let (stickiness, algorithm) = group.request_settings();
        let sticky = match &stickiness {
            Some(Stickiness::LbCookie { .. }) => cookie(&req, LB_COOKIE),
            Some(Stickiness::AppCookie { .. }) => cookie(&req, APP_COOKIE),
            None => None,
        };
        let has_body = req.framing() != Framing::Done;
        let expect = has_body
            && req
                .header("expect")
                .is_some_and(|v| v.eq_ignore_ascii_case(b"100-continue"));
        // Encoded once: the same bytes go to whichever target takes the request.
        let head = upstream::encode_head(&req, &client.ip, client.port, expect);
        let resend = !has_body && req.method.is_idempotent();
        if expect {
            client
                .stream
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await?;
        }
        let mut body_sent = false;
        let mut tried: Vec<Arc<Target>> = Vec::new();
        let (guard, mut conn, resp, started) = loop {
            let Some(target) = group.pick(algorithm, sticky.as_deref(), &tried) else {
                group.metrics.elb_error(503);
                return client.error(&req, 503, "no healthy target").await;
            };
            let guard = InFlight::new(target);
            let target = &guard.0;
            let started = Instant::now();
            let mut conn = match self.pool.checkout(&target.address).await {
                Ok(conn) => conn,
                Err(e) => {
                    // Nothing was sent: the next healthy target gets the request.
                    debug!(target = %target.address, error = %e, "target refused; trying another");
                    tried.push(target.clone());
                    continue;
                }
            };
            let exchange = async {
                conn.stream
                    .write_all(&head)
                    .await
                    .map_err(|e| wire::ReadError {
                        error: e.to_string(),
                        unanswered: true,
                    })?;
                if has_body {
                    body_sent = true;
                    relay_request_body(client, &mut conn, &req).await?;
                }
                wire::read_response(&mut conn.stream, &mut conn.buf).await
            };
            match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
                Ok(Ok(resp)) => break (guard, conn, resp, started),
                Ok(Err(e))
                    if (resend || (e.unanswered && !body_sent)) && tried.len() < MAX_RETRIES =>
                {
                    debug!(target = %target.address, error = %e.error, "target failed; trying another");
                    tried.push(target.clone());
                }
                Ok(Err(e)) => {
                    debug!(target = %target.address, error = %e.error, "target failed");
                    group.metrics.elb_error(502);
                    let keep = client
                        .error(&req, 502, "the target failed to answer")
                        .await?;
                    return Ok(keep && !body_sent);
                }
                Err(_) => {
                    group.metrics.elb_error(504);
                    client
                        .error(&req, 504, "the target did not answer in time")
                        .await?;
                    return Ok(false);
                }
            }
        };
        group
            .metrics
            .target_response(resp.status, started.elapsed());
        let framing = resp.framing(&req.method);
        let target_keeps = resp.keep_alive(framing);
        // A chunked body, or one that ends when the target closes, goes to an HTTP/1.1 client
        // chunked; an HTTP/1.0 client gets it as is and the connection closes after it.
        let unsized_body = matches!(framing, Framing::Chunked(_) | Framing::Close);
        let rechunk = unsized_body && !req.http10;
        let keep = req.keep_alive() && !(unsized_body && req.http10);
        write_response_head(&mut client.out, &resp, rechunk, req.http10, keep);
        stick(
            &mut client.out,
            &resp,
            &stickiness,
            &guard.0,
            sticky.as_deref(),
        );
        client.out.extend_from_slice(b"\r\n");
        let mut reader = BodyReader { framing };
        while !reader.done() {
            // Write what gathered before waiting for more from the target.
            if conn.buf.is_empty() || client.out.len() >= FLUSH_AT {
                client.flush().await?;
            }
            match reader.next(&mut conn.stream, &mut conn.buf).await {
                Ok(Some(data)) if rechunk => wire::put_chunk(&mut client.out, &data),
                Ok(Some(data)) => client.out.extend_from_slice(&data),
                Ok(None) => break,
                Err(e) => {
                    // The head is gone already: all that is left is to cut the client off.
                    debug!(target = %guard.0.address, error = %e, "target failed in a body");
                    client.flush().await?;
                    return Ok(false);
                }
            }
        }
        if rechunk {
            client.out.extend_from_slice(b"0\r\n\r\n");
        }
        client.flush().await?;
        if target_keeps && conn.buf.is_empty() {
            self.pool.checkin(&guard.0.address, conn);
        }
        drop(guard);
        Ok(keep)
    }
}

/// Copies the client's request body to the target: as is with a length, re-chunked when
/// chunked.
async fn relay_request_body(
    client: &mut Client,
    conn: &mut Conn,
    req: &RequestHead,
) -> Result<(), wire::ReadError> {
    let failed = |error: String| wire::ReadError {
        error,
        unanswered: false,
    };
    let chunked = req.meta.chunked;
    let mut reader = BodyReader {
        framing: req.framing(),
    };
    let mut out = Vec::new();
    while let Some(data) = reader
        .next(&mut client.stream, &mut client.buf)
        .await
        .map_err(failed)?
    {
        out.clear();
        if chunked {
            wire::put_chunk(&mut out, &data);
        } else {
            out.extend_from_slice(&data);
        }
        conn.stream
            .write_all(&out)
            .await
            .map_err(|e| failed(e.to_string()))?;
    }
    if chunked {
        conn.stream
            .write_all(b"0\r\n\r\n")
            .await
            .map_err(|e| failed(e.to_string()))?;
    }
    Ok(())
}

/// The status line and the target's headers but hop-by-hop ones, with this hop's framing and
/// connection headers; the blank line is left to the caller.
fn write_response_head(
    out: &mut Vec<u8>,
    resp: &ResponseHead,
    rechunk: bool,
    http10: bool,
    keep: bool,
) {
    let reason = StatusCode::from_u16(resp.status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let _ = write!(out, "HTTP/1.1 {} {reason}\r\n", resp.status);
    for (name, value) in resp.headers() {
        // A re-chunked body carries no length of its own.
        if resp.meta.hop(name) || (rechunk && name.eq_ignore_ascii_case(b"content-length")) {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    if rechunk {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    connection_header(out, http10, keep);
}

/// Counts a request against its target until its response is relayed.
pub(crate) struct InFlight(pub(crate) Arc<Target>);

impl InFlight {
    pub fn new(target: Arc<Target>) -> InFlight {
        target.in_flight.local().fetch_add(1, Ordering::AcqRel);
        InFlight(target)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // Perhaps another thread's shard than the increment's: the sum stays right.
        self.0.in_flight.local().fetch_sub(1, Ordering::AcqRel);
    }
}

/// The value of cookie `name` in the request's Cookie headers.
fn cookie(req: &RequestHead, name: &str) -> Option<String> {
    req.headers()
        .filter(|(n, _)| n.eq_ignore_ascii_case(b"cookie"))
        .filter_map(|(_, v)| std::str::from_utf8(v).ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then(|| v.trim().to_owned())
        })
}

/// Adds the stickiness cookie to a target's response: always for lb_cookie (which refreshes
/// its expiry), for app_cookie when the target set the application's cookie or the client
/// moved to another target.
fn stick(
    out: &mut Vec<u8>,
    resp: &ResponseHead,
    stickiness: &Option<Stickiness>,
    target: &Target,
    sent: Option<&str>,
) {
    let (name, duration) = match stickiness {
        None => return,
        Some(Stickiness::LbCookie { duration }) => (LB_COOKIE, duration),
        Some(Stickiness::AppCookie {
            cookie_name,
            duration,
        }) => {
            let prefix = format!("{cookie_name}=");
            let set = resp.headers().any(|(n, v)| {
                n.eq_ignore_ascii_case(b"set-cookie") && v.starts_with(prefix.as_bytes())
            });
            // A client whose pinned target failed is pinned again to the new one.
            let moved = sent.is_some_and(|s| s != target.cookie);
            if !set && !moved {
                return;
            }
            (APP_COOKIE, duration)
        }
    };
    out.extend_from_slice(
        format!(
            "set-cookie: {name}={}; Max-Age={}; Path=/\r\n",
            target.cookie,
            duration.as_secs()
        )
        .as_bytes(),
    );
}

/// A redirect's status and Location: parts left empty keep the request's.
fn redirect_to(action: &Action, req: &RequestHead, listener_port: u16) -> (u16, String) {
    let Action::Redirect {
        protocol,
        host: to_host,
        port,
        path,
        status,
    } = action
    else {
        return (500, String::new());
    };
    let scheme = protocol.as_deref().unwrap_or("HTTP").to_ascii_lowercase();
    let host = req.host();
    let request_host = host.rsplit_once(':').map_or(host, |(h, _)| h);
    let to_host = to_host.as_deref().unwrap_or(request_host);
    let port = match (port, protocol) {
        (Some(p), _) => *p,
        // A redirect that changes the protocol goes to its default port.
        (None, Some(_)) if scheme == "https" => 443,
        (None, Some(_)) => 80,
        (None, None) => listener_port,
    };
    let default_port = if scheme == "https" { 443 } else { 80 };
    let authority = if port == default_port {
        to_host.to_owned()
    } else {
        format!("{to_host}:{port}")
    };
    let path = path.as_deref().unwrap_or(req.path());
    let query = req.query().map(|q| format!("?{q}")).unwrap_or_default();
    (*status, format!("{scheme}://{authority}{path}{query}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn head_of(raw: &'static [u8]) -> RequestHead {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let writer = tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(raw).await.unwrap();
            s
        });
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut buf = BytesMut::new();
        let head = wire::read_request(&mut stream, &mut buf)
            .await
            .unwrap()
            .unwrap();
        drop(writer.await.unwrap());
        head
    }

    #[tokio::test]
    async fn cookies_are_found_among_others() {
        let req =
            head_of(b"GET / HTTP/1.1\r\nCookie: a=1; HANULLB=abc\r\ncookie: b=2\r\n\r\n").await;
        assert_eq!(cookie(&req, LB_COOKIE).as_deref(), Some("abc"));
        assert_eq!(cookie(&req, "b").as_deref(), Some("2"));
        assert_eq!(cookie(&req, "c"), None);
    }

    #[tokio::test]
    async fn the_head_to_the_target_drops_hop_by_hop_headers_and_adds_forwarded_ones() {
        let req = head_of(
            b"GET http://web.example/a?b=1 HTTP/1.1\r\nConnection: keep-alive, X-Private\r\nX-Private: 1\r\nKeep-Alive: timeout=5\r\nHost: web.example\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: https\r\nAccept: */*\r\n\r\n",
        )
        .await;
        let text =
            String::from_utf8(upstream::encode_head(&req, "192.168.1.5", 8080, false)).unwrap();
        assert!(text.starts_with("GET /a?b=1 HTTP/1.1\r\n"), "{text}");
        for want in [
            "Host: web.example\r\n",
            "X-Forwarded-For: 10.0.0.1, 192.168.1.5\r\n",
            "x-forwarded-proto: http\r\n",
            "x-forwarded-port: 8080\r\n",
            "Accept: */*\r\n",
        ] {
            assert!(text.contains(want), "{want:?} in {text}");
        }
        for gone in [
            "X-Private",
            "Keep-Alive",
            "Connection",
            "https",
            "transfer-encoding",
        ] {
            assert!(!text.contains(gone), "{gone:?} in {text}");
        }
        assert!(text.ends_with("\r\n\r\n"));
        assert_eq!(req.path(), "/a");
        // Chunked wins over a length, which is not sent along.
        let both = head_of(
            b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        )
        .await;
        let text = String::from_utf8(upstream::encode_head(&both, "10.0.0.9", 80, false)).unwrap();
        assert!(text.contains("transfer-encoding: chunked\r\n"), "{text}");
        assert!(
            !text.to_ascii_lowercase().contains("content-length"),
            "{text}"
        );
        assert_eq!(req.query(), Some("b=1"));
    }
}
