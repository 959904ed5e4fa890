//! The agent's HTTP endpoint: the instance metadata service (EC2's IMDS) and the logs API.
//!
//! Every instance on a node shares the node's loopback address, so unlike EC2's
//! `169.254.169.254` the instance's name is the first segment of the path; the agent hands each
//! instance `HANUL_METADATA_URL=http://<endpoint>/<instance>/latest`, and the rest of the path is
//! IMDS's:
//!
//! ```text
//! GET /{instance}/latest/meta-data/                        keys, one a line, directories end in /
//! GET /{instance}/latest/meta-data/instance-id             the instance's name
//! GET /{instance}/latest/meta-data/instance-type
//! GET /{instance}/latest/meta-data/placement/availability-zone
//! GET /{instance}/latest/meta-data/local-ipv4
//! GET /{instance}/latest/meta-data/hostname                the node
//! GET /{instance}/latest/meta-data/tags/instance/[{key}]   the instance's labels
//! GET /{instance}/latest/meta-data/ports/[{name}]          host ports (a hanul extension)
//! GET /{instance}/latest/meta-data/spot/instance-action    404 unless a notice exists
//! GET /{instance}/latest/meta-data/autoscaling/target-lifecycle-state
//! GET /{instance}/latest/user-data                         404 when empty
//! GET /v1/logs/{instance}?follow=true&tail=N               the console log (bearer token)
//! GET /metrics                                             the node's load balancer metrics
//! ```
//!
//! The metadata service needs no token, like IMDSv1: anything on the node may read it, which is
//! what an instance can do on EC2 too. The logs API is for the API server, which proxies
//! `hanul logs` to it, and requires the agent's join token (which the server also holds).
//!
//! Logs are read from `instances_dir/<instance>/logs/console.log`, which the workload writes
//! itself (see [`crate::driver`]). Following polls the file: it survives copy-then-truncate
//! rotation (a file shorter than what was sent starts again from its beginning; lines written
//! between the copy and the truncation and a truncation followed by more writes than were sent
//! before the next poll are lost or repeated, as with `tail -F`) and a log that does not exist
//! yet.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::{self, SeekFrom};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{ALLOW, AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::driver::{CONSOLE_LOG, log_dir};

/// How often a followed log is checked for new bytes.
const FOLLOW_POLL: Duration = Duration::from_millis(100);
/// The largest chunk of log sent at once.
const CHUNK: usize = 64 * 1024;
/// The block size `tail` reads backwards with.
const TAIL_BLOCK: u64 = 8 * 1024;
/// How long open connections get to finish once `stop` fires.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// What the metadata endpoint tells an instance about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InstanceMetadata {
    /// The instance's name.
    pub instance_id: String,
    pub instance_type: String,
    pub zone: String,
    pub node: String,
    pub private_ip: String,
    pub user_data: String,
    /// The instance's labels.
    pub tags: BTreeMap<String, String>,
    /// Host ports by port name.
    pub ports: BTreeMap<String, u32>,
    /// End of a spot interruption notice, if the instance has one.
    pub spot_interruption: Option<SystemTime>,
    /// Auto Scaling lifecycle state ("InService", ...) of an instance of a group.
    pub lifecycle_state: Option<String>,
}

/// Where the endpoint gets the metadata of the instances bound to this node.
pub trait MetadataSource: Send + Sync + 'static {
    /// The metadata of an instance bound to this node, by name; None if unknown here.
    fn metadata(&self, instance: &str) -> Option<InstanceMetadata>;
}

type ResponseBody = BoxBody<Bytes, Infallible>;

/// Renders the node's metrics in the Prometheus text format (the load balancers' data plane).
pub type MetricsFn = Arc<dyn Fn() -> String + Send + Sync>;

/// Everything a request handler needs; shared by all connections.
struct Shared {
    source: Arc<dyn MetadataSource>,
    instances_dir: PathBuf,
    token: String,
    metrics: MetricsFn,
    stop: watch::Receiver<bool>,
}

/// Serves until `stop` turns true. `instances_dir/<name>/logs/console.log` is an instance's log.
/// `token`: the bearer token the logs API requires (the agent's join token).
pub async fn serve(
    listener: TcpListener,
    source: Arc<dyn MetadataSource>,
    instances_dir: PathBuf,
    token: String,
    metrics: MetricsFn,
    stop: watch::Receiver<bool>,
) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "Serving the instance metadata and logs endpoint.");
    }
    let shared = Arc::new(Shared {
        source,
        instances_dir,
        token,
        metrics,
        stop: stop.clone(),
    });
    let mut stopping = stop.clone();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped(&mut stopping) => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Typically out of file descriptors: do not spin.
                warn!(%error, "Accepting a connection to the endpoint failed; retrying.");
                tokio::time::sleep(FOLLOW_POLL).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(&shared, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stopped(&mut stop) => {
                    // Log streams end on `stop` by themselves; this ends idle keep-alives.
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn).await;
                }
            }
        });
    }
    info!("The instance endpoint stopped.");
}

/// Resolves when `stop` turns true or its sender is gone (then nobody can stop us any more).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn handle(shared: &Shared, req: Request<Incoming>) -> Response<ResponseBody> {
    if req.method() != Method::GET {
        let mut resp = text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method {} is not allowed; use GET", req.method()),
        );
        resp.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET"));
        return resp;
    }
    let path = req.uri().path();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    debug!(path, "Endpoint request.");
    match segments.as_slice() {
        ["v1", "logs", instance] => logs(shared, &req, instance).await,
        ["metrics"] => {
            let mut resp = text(StatusCode::OK, (shared.metrics)());
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            resp
        }
        [instance, "latest", rest @ ..] => metadata(shared, instance, rest),
        _ => not_found(format!("no such path {path:?}")),
    }
}

// ---- metadata ----

fn metadata(shared: &Shared, instance: &str, rest: &[&str]) -> Response<ResponseBody> {
    let Some(md) = shared.source.metadata(instance) else {
        return not_found(format!("instance {instance:?} is not known on this node"));
    };
    // A trailing slash leaves an empty last segment; a directory is served with or without it.
    let rest: Vec<&str> = match rest {
        [init @ .., ""] => init.to_vec(),
        all => all.to_vec(),
    };
    match rest.as_slice() {
        [] => listing(
            ["meta-data/"]
                .into_iter()
                .chain((!md.user_data.is_empty()).then_some("user-data"))
                .map(str::to_owned),
        ),
        ["user-data"] if md.user_data.is_empty() => {
            not_found(format!("instance {instance:?} has no user data"))
        }
        ["user-data"] => ok(md.user_data),
        ["meta-data", key @ ..] => match meta_data(&md, key) {
            Some(resp) => resp,
            None => not_found(format!(
                "no metadata {:?} for instance {instance:?}",
                key.join("/")
            )),
        },
        _ => not_found(format!(
            "no such path {:?} for instance {instance:?}",
            rest.join("/")
        )),
    }
}

/// The value or listing of a `meta-data/` key; None when there is none.
fn meta_data(md: &InstanceMetadata, key: &[&str]) -> Option<Response<ResponseBody>> {
    let resp = match key {
        [] => {
            let mut keys = vec![
                "hostname",
                "instance-id",
                "instance-type",
                "local-ipv4",
                "placement/",
                "ports/",
                "tags/",
            ];
            // As on EC2, categories that do not apply to the instance are not listed.
            if md.lifecycle_state.is_some() {
                keys.push("autoscaling/");
            }
            if md.spot_interruption.is_some() {
                keys.push("spot/");
            }
            keys.sort_unstable();
            listing(keys.into_iter().map(str::to_owned))
        }
        ["instance-id"] => ok(md.instance_id.clone()),
        ["instance-type"] => ok(md.instance_type.clone()),
        ["local-ipv4"] => ok(md.private_ip.clone()),
        ["hostname"] => ok(md.node.clone()),
        ["placement"] => listing(["availability-zone".to_owned()]),
        ["placement", "availability-zone"] => ok(md.zone.clone()),
        ["tags"] => listing(["instance/".to_owned()]),
        ["tags", "instance"] => listing(md.tags.keys().cloned()),
        ["tags", "instance", tag] => ok(md.tags.get(*tag)?.clone()),
        ["ports"] => listing(md.ports.keys().cloned()),
        ["ports", port] => ok(md.ports.get(*port)?.to_string()),
        ["spot"] if md.spot_interruption.is_some() => listing(["instance-action".to_owned()]),
        ["spot", "instance-action"] => ok(spot_instance_action(md.spot_interruption?)),
        ["autoscaling"] if md.lifecycle_state.is_some() => {
            listing(["target-lifecycle-state".to_owned()])
        }
        ["autoscaling", "target-lifecycle-state"] => ok(md.lifecycle_state.clone()?),
        _ => return None,
    };
    Some(resp)
}

/// The body of `spot/instance-action`, as AWS serves it.
fn spot_instance_action(at: SystemTime) -> String {
    format!(
        r#"{{"action":"terminate","time":"{}"}}"#,
        humantime::format_rfc3339_seconds(at)
    )
}

fn listing(keys: impl IntoIterator<Item = String>) -> Response<ResponseBody> {
    ok(keys.into_iter().collect::<Vec<_>>().join("\n"))
}

fn ok(body: String) -> Response<ResponseBody> {
    text(StatusCode::OK, body)
}

fn not_found(message: String) -> Response<ResponseBody> {
    text(StatusCode::NOT_FOUND, message + "\n")
}

fn text(status: StatusCode, body: String) -> Response<ResponseBody> {
    let mut resp = Response::new(Full::new(Bytes::from(body)).boxed());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
}

// ---- logs ----

/// What a logs request asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct LogQuery {
    follow: bool,
    /// The number of last lines to start with; None: the whole log.
    tail: Option<u64>,
}

fn parse_log_query(query: Option<&str>) -> Result<LogQuery, String> {
    let mut q = LogQuery::default();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "follow" => {
                q.follow = match value {
                    "true" | "1" | "" => true,
                    "false" | "0" => false,
                    other => return Err(format!("follow: {other:?} is not true or false")),
                }
            }
            "tail" => {
                let n: i64 = value
                    .parse()
                    .map_err(|_| format!("tail: {value:?} is not a whole number of lines"))?;
                // Negative means the whole log, like kubectl's --tail=-1.
                q.tail = u64::try_from(n).ok();
            }
            _ => {}
        }
    }
    Ok(q)
}

/// Whether `name` can be an instance's directory name (and cannot escape `instances_dir`).
fn is_instance_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

fn authorized(req: &Request<Incoming>, token: &str) -> bool {
    let presented = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "));
    match presented {
        // An empty configured token would let anyone in with "Bearer ": refuse everyone.
        Some(p) if !token.is_empty() => constant_time_eq(p.as_bytes(), token.as_bytes()),
        _ => false,
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn logs(shared: &Shared, req: &Request<Incoming>, instance: &str) -> Response<ResponseBody> {
    if !authorized(req, &shared.token) {
        let mut resp = text(
            StatusCode::UNAUTHORIZED,
            "the logs API needs \"Authorization: Bearer <the agent's join token>\"\n".into(),
        );
        resp.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer"),
        );
        return resp;
    }
    let query = match parse_log_query(req.uri().query()) {
        Ok(q) => q,
        Err(message) => return text(StatusCode::BAD_REQUEST, message + "\n"),
    };
    let root = shared.instances_dir.join(instance);
    if !is_instance_name(instance) || !tokio::fs::try_exists(&root).await.unwrap_or(false) {
        return not_found(format!("instance {instance:?} has no logs on this node"));
    }
    let (tx, rx) = mpsc::channel(16);
    let stream = LogStream {
        root,
        instance: instance.to_owned(),
        query,
        tx,
        stop: shared.stop.clone(),
    };
    tokio::spawn(stream.run());
    let mut resp = Response::new(ChannelBody(rx).boxed());
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
}

/// A response body fed by a task; the task sees the receiver dropped when the client goes.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

/// One log being sent.
struct LogStream {
    root: PathBuf,
    instance: String,
    query: LogQuery,
    tx: mpsc::Sender<Bytes>,
    stop: watch::Receiver<bool>,
}

/// Why a log stream ended early.
enum Ended {
    /// The client went away or the endpoint stops.
    Closed,
    Io(io::Error),
}

impl From<io::Error> for Ended {
    fn from(e: io::Error) -> Self {
        Ended::Io(e)
    }
}

impl LogStream {
    async fn run(mut self) {
        let path = log_dir(&self.root).join(CONSOLE_LOG);
        match self.send(&path).await {
            Ok(()) | Err(Ended::Closed) => {}
            Err(Ended::Io(error)) => {
                warn!(instance = %self.instance, path = %path.display(), %error, "Reading the log failed; ending its stream.");
            }
        }
    }

    async fn send(&mut self, path: &Path) -> Result<(), Ended> {
        // The open log, its identity (to notice it was replaced) and what was sent of it.
        let mut open: Option<(tokio::fs::File, (u64, u64))> = None;
        let mut offset = 0u64;
        let mut first = true;
        loop {
            if open.is_none() {
                match tokio::fs::File::open(path).await {
                    Ok(file) => {
                        let id = identity(&file.metadata().await?);
                        if first && let Some(lines) = self.query.tail {
                            offset = tail_start(path, lines).await?;
                        }
                        open = Some((file, id));
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
                first = false;
            }
            if let Some((file, id)) = &mut open {
                let meta = file.metadata().await?;
                if meta.len() < offset {
                    // Truncated in place (copy-then-truncate rotation): start over.
                    offset = 0;
                }
                let end = meta.len();
                while offset < end {
                    let want = usize::try_from(end - offset).unwrap_or(CHUNK).min(CHUNK);
                    let mut buf = vec![0; want];
                    file.seek(SeekFrom::Start(offset)).await?;
                    let n = file.read(&mut buf).await?;
                    if n == 0 {
                        break;
                    }
                    buf.truncate(n);
                    offset += n as u64;
                    self.tx
                        .send(Bytes::from(buf))
                        .await
                        .map_err(|_| Ended::Closed)?;
                }
                // Replaced (renamed away, maybe created anew): read the new one from its start.
                let replaced = !matches!(
                    tokio::fs::metadata(path).await,
                    Ok(m) if identity(&m) == *id
                );
                if replaced && self.query.follow {
                    open = None;
                    offset = 0;
                }
            }
            if !self.query.follow {
                return Ok(());
            }
            if !tokio::fs::try_exists(&self.root).await.unwrap_or(false) {
                // The instance is gone for good: so is its log.
                return Ok(());
            }
            tokio::select! {
                _ = tokio::time::sleep(FOLLOW_POLL) => {}
                _ = self.tx.closed() => return Err(Ended::Closed),
                _ = stopped(&mut self.stop) => return Err(Ended::Closed),
            }
        }
    }
}

/// Device and inode: what tells a replaced file from the one that is open.
fn identity(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

/// The offset at which the last `lines` lines of the file start, read backwards in blocks.
/// A final line without its newline counts as a line.
async fn tail_start(path: &Path, lines: u64) -> io::Result<u64> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&path)?;
        tail_start_of(&file, lines)
    })
    .await
    .map_err(io::Error::other)?
}

fn tail_start_of(file: &std::fs::File, lines: u64) -> io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let len = file.metadata()?.len();
    if lines == 0 {
        return Ok(len);
    }
    let mut end = len;
    let mut block = vec![0u8; TAIL_BLOCK as usize];
    // The newline that ends the last line does not start a line after it.
    let mut skip_final_newline = true;
    let mut newlines = 0u64;
    while end > 0 {
        let start = end.saturating_sub(TAIL_BLOCK);
        let buf = &mut block[..(end - start) as usize];
        file.read_exact_at(buf, start)?;
        for (i, &b) in buf.iter().enumerate().rev() {
            if b != b'\n' {
                skip_final_newline = false;
                continue;
            }
            if std::mem::take(&mut skip_final_newline) {
                continue;
            }
            newlines += 1;
            if newlines == lines {
                return Ok(start + i as u64 + 1);
            }
        }
        end = start;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::net::SocketAddr;
    use std::sync::Mutex;
    use std::time::Instant;

    use hyper::client::conn::http1;

    use super::*;

    const TOKEN: &str = "join-token";

    /// A fake metadata source: a fixed map of instances.
    #[derive(Default)]
    struct FakeSource(Mutex<BTreeMap<String, InstanceMetadata>>);

    impl MetadataSource for FakeSource {
        fn metadata(&self, instance: &str) -> Option<InstanceMetadata> {
            self.0.lock().unwrap().get(instance).cloned()
        }
    }

    struct Endpoint {
        addr: SocketAddr,
        source: Arc<FakeSource>,
        dir: tempfile::TempDir,
        stop: watch::Sender<bool>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Endpoint {
        fn log(&self, instance: &str) -> PathBuf {
            log_dir(&self.dir.path().join(instance)).join(CONSOLE_LOG)
        }

        fn set(&self, md: InstanceMetadata) {
            self.source
                .0
                .lock()
                .unwrap()
                .insert(md.instance_id.clone(), md);
        }
    }

    async fn start() -> Endpoint {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let source = Arc::new(FakeSource::default());
        let dir = tempfile::tempdir().unwrap();
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(serve(
            listener,
            source.clone(),
            dir.path().to_owned(),
            TOKEN.into(),
            Arc::new(|| "hanul_test_metric 1\n".to_owned()),
            stop_rx,
        ));
        Endpoint {
            addr,
            source,
            dir,
            stop,
            task,
        }
    }

    fn web() -> InstanceMetadata {
        InstanceMetadata {
            instance_id: "web-1".into(),
            instance_type: "t3.micro".into(),
            zone: "az-a".into(),
            node: "node-a".into(),
            private_ip: "127.0.0.1".into(),
            user_data: String::new(),
            tags: BTreeMap::from([
                ("app".to_owned(), "web".to_owned()),
                ("tier".to_owned(), "front".to_owned()),
            ]),
            ports: BTreeMap::from([("http".to_owned(), 30001)]),
            spot_interruption: None,
            lifecycle_state: None,
        }
    }

    /// Sends one request on a new connection; returns the response with its body unread.
    async fn send(
        addr: SocketAddr,
        method: Method,
        path: &str,
        token: Option<&str>,
    ) -> Response<Incoming> {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", addr.to_string());
        if let Some(t) = token {
            req = req.header(AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req.body(http_body_util::Empty::<Bytes>::new()).unwrap();
        sender.send_request(req).await.unwrap()
    }

    async fn get(addr: SocketAddr, path: &str) -> (StatusCode, String) {
        let resp = send(addr, Method::GET, path, None).await;
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    async fn get_logs(addr: SocketAddr, path: &str) -> (StatusCode, String) {
        let resp = send(addr, Method::GET, path, Some(TOKEN)).await;
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    /// Reads a streamed body until `want` returns true of all that was received, or panics
    /// with what was received after a deadline.
    async fn read_until(body: &mut Incoming, seen: &mut String, want: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !want(seen) {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, body.frame()).await {
                Ok(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        seen.push_str(std::str::from_utf8(data).unwrap());
                    }
                }
                Ok(other) => panic!("the stream ended ({other:?}); received {seen:?}"),
                Err(_) => panic!("timed out; received {seen:?}"),
            }
        }
    }

    fn append(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }

    #[tokio::test]
    async fn metadata_keys_are_served_like_imds() {
        let ep = start().await;
        ep.set(web());
        let base = "/web-1/latest/meta-data";
        for (path, want) in [
            ("/instance-id", "web-1"),
            ("/instance-type", "t3.micro"),
            ("/placement/availability-zone", "az-a"),
            ("/local-ipv4", "127.0.0.1"),
            ("/hostname", "node-a"),
            ("/ports/http", "30001"),
            ("/placement/", "availability-zone"),
            (
                "/",
                "hostname\ninstance-id\ninstance-type\nlocal-ipv4\nplacement/\nports/\ntags/",
            ),
            (
                "",
                "hostname\ninstance-id\ninstance-type\nlocal-ipv4\nplacement/\nports/\ntags/",
            ),
        ] {
            assert_eq!(
                get(ep.addr, &format!("{base}{path}")).await,
                (StatusCode::OK, want.to_owned()),
                "{path}"
            );
        }
        assert_eq!(
            get(ep.addr, "/web-1/latest/").await,
            (StatusCode::OK, "meta-data/".to_owned())
        );
        let (status, body) = get(ep.addr, &format!("{base}/nope")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(
            body.contains("\"nope\"") && body.contains("web-1"),
            "{body}"
        );
    }

    #[tokio::test]
    async fn tags_are_the_instance_labels() {
        let ep = start().await;
        ep.set(web());
        let base = "/web-1/latest/meta-data/tags/instance";
        assert_eq!(
            get(ep.addr, &format!("{base}/")).await,
            (StatusCode::OK, "app\ntier".to_owned())
        );
        assert_eq!(
            get(ep.addr, &format!("{base}/tier")).await,
            (StatusCode::OK, "front".to_owned())
        );
        assert_eq!(
            get(ep.addr, &format!("{base}/owner")).await.0,
            StatusCode::NOT_FOUND
        );
    }

    #[tokio::test]
    async fn a_spot_notice_is_served_only_when_the_instance_has_one() {
        let ep = start().await;
        ep.set(web());
        let path = "/web-1/latest/meta-data/spot/instance-action";
        assert_eq!(get(ep.addr, path).await.0, StatusCode::NOT_FOUND);
        assert_eq!(
            get(
                ep.addr,
                "/web-1/latest/meta-data/autoscaling/target-lifecycle-state"
            )
            .await
            .0,
            StatusCode::NOT_FOUND
        );

        let mut md = web();
        // 2017-09-18T08:22:00Z, the example in AWS's documentation.
        md.spot_interruption = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_505_722_920));
        md.lifecycle_state = Some("InService".into());
        ep.set(md);
        assert_eq!(
            get(ep.addr, path).await,
            (
                StatusCode::OK,
                r#"{"action":"terminate","time":"2017-09-18T08:22:00Z"}"#.to_owned()
            )
        );
        let (_, keys) = get(ep.addr, "/web-1/latest/meta-data/").await;
        assert!(
            keys.lines().any(|k| k == "spot/") && keys.lines().any(|k| k == "autoscaling/"),
            "{keys}"
        );
        assert_eq!(
            get(
                ep.addr,
                "/web-1/latest/meta-data/autoscaling/target-lifecycle-state"
            )
            .await,
            (StatusCode::OK, "InService".to_owned())
        );
    }

    #[tokio::test]
    async fn user_data_is_served_and_404_when_empty() {
        let ep = start().await;
        ep.set(web());
        assert_eq!(
            get(ep.addr, "/web-1/latest/user-data").await.0,
            StatusCode::NOT_FOUND
        );
        let mut md = web();
        md.user_data = "#!/bin/sh\necho hi\n".into();
        ep.set(md);
        assert_eq!(
            get(ep.addr, "/web-1/latest/user-data").await,
            (StatusCode::OK, "#!/bin/sh\necho hi\n".to_owned())
        );
    }

    #[tokio::test]
    async fn an_unknown_instance_is_404_and_other_methods_are_405() {
        let ep = start().await;
        ep.set(web());
        let (status, body) = get(ep.addr, "/db-1/latest/meta-data/instance-id").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body.contains("\"db-1\""), "{body}");
        assert_eq!(get(ep.addr, "/").await.0, StatusCode::NOT_FOUND);
        let resp = send(
            ep.addr,
            Method::POST,
            "/web-1/latest/meta-data/instance-id",
            None,
        )
        .await;
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(resp.headers()[ALLOW], "GET");
    }

    #[tokio::test]
    async fn logs_require_the_token_and_an_existing_instance() {
        let ep = start().await;
        append(&ep.log("web-1"), "hello\n");
        for token in [None, Some("wrong")] {
            let resp = send(ep.addr, Method::GET, "/v1/logs/web-1", token).await;
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{token:?}");
        }
        assert_eq!(
            get_logs(ep.addr, "/v1/logs/web-1").await,
            (StatusCode::OK, "hello\n".to_owned())
        );
        assert_eq!(
            get_logs(ep.addr, "/v1/logs/db-1").await.0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            get_logs(ep.addr, "/v1/logs/..").await.0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            get_logs(ep.addr, "/v1/logs/web-1?tail=many").await.0,
            StatusCode::BAD_REQUEST
        );
    }

    #[tokio::test]
    async fn an_instance_without_a_log_yet_has_an_empty_one() {
        let ep = start().await;
        std::fs::create_dir_all(ep.dir.path().join("web-1")).unwrap();
        assert_eq!(
            get_logs(ep.addr, "/v1/logs/web-1").await,
            (StatusCode::OK, String::new())
        );
    }

    #[tokio::test]
    async fn tail_sends_the_last_lines() {
        let ep = start().await;
        let log = ep.log("web-1");
        // More than one backwards block, so the scan crosses block boundaries.
        let text: String = (0..5000).map(|i| format!("line {i}\n")).collect();
        append(&log, &text);
        assert_eq!(
            get_logs(ep.addr, "/v1/logs/web-1?tail=3").await.1,
            "line 4997\nline 4998\nline 4999\n"
        );
        assert_eq!(get_logs(ep.addr, "/v1/logs/web-1?tail=0").await.1, "");
        assert_eq!(get_logs(ep.addr, "/v1/logs/web-1?tail=-1").await.1, text);
        assert_eq!(get_logs(ep.addr, "/v1/logs/web-1?tail=9999").await.1, text);
        let (_, last_1000) = get_logs(ep.addr, "/v1/logs/web-1?tail=1000").await;
        assert_eq!(last_1000.lines().count(), 1000);
        assert!(last_1000.starts_with("line 4000\n"), "{}", &last_1000[..20]);
        append(&log, "partial");
        assert_eq!(
            get_logs(ep.addr, "/v1/logs/web-1?tail=2").await.1,
            "line 4999\npartial"
        );
    }

    #[tokio::test]
    async fn follow_sends_what_is_appended_and_survives_a_truncation() {
        let ep = start().await;
        let log = ep.log("web-1");
        append(&log, "one\ntwo\n");
        let resp = send(
            ep.addr,
            Method::GET,
            "/v1/logs/web-1?follow=true&tail=1",
            Some(TOKEN),
        )
        .await;
        assert_eq!(resp.status(), StatusCode::OK);
        let mut body = resp.into_body();
        let mut seen = String::new();
        read_until(&mut body, &mut seen, |s| s == "two\n").await;
        append(&log, "three\n");
        read_until(&mut body, &mut seen, |s| s.ends_with("three\n")).await;
        assert_eq!(seen, "two\nthree\n");

        // Copy-then-truncate rotation: the writer keeps going at the start of the file.
        crate::driver::rotate_log_file(&log, 1, 1).unwrap();
        append(&log, "four\n");
        read_until(&mut body, &mut seen, |s| s.ends_with("four\n")).await;
        assert_eq!(seen, "two\nthree\nfour\n");
    }

    #[tokio::test]
    async fn follow_waits_for_the_log_and_ends_when_the_instance_directory_goes() {
        let ep = start().await;
        let root = ep.dir.path().join("web-1");
        std::fs::create_dir_all(&root).unwrap();
        let resp = send(
            ep.addr,
            Method::GET,
            "/v1/logs/web-1?follow=true",
            Some(TOKEN),
        )
        .await;
        let mut body = resp.into_body();
        let mut seen = String::new();
        append(&ep.log("web-1"), "booting\n");
        read_until(&mut body, &mut seen, |s| s == "booting\n").await;
        std::fs::remove_dir_all(&root).unwrap();
        let end = tokio::time::timeout(Duration::from_secs(10), body.collect()).await;
        assert!(end.is_ok(), "the stream ends once the instance is gone");
    }

    /// How many descriptors of this process have `path` open.
    fn open_descriptors(path: &Path) -> usize {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|target| target == path)
            .count()
    }

    #[tokio::test]
    async fn a_follow_stream_ends_when_its_client_goes_away() {
        let ep = start().await;
        let log = ep.log("web-1");
        append(&log, "up\n");
        let log = log.canonicalize().unwrap();
        let resp = send(
            ep.addr,
            Method::GET,
            "/v1/logs/web-1?follow=true",
            Some(TOKEN),
        )
        .await;
        let mut body = resp.into_body();
        let mut seen = String::new();
        read_until(&mut body, &mut seen, |s| s == "up\n").await;
        assert_eq!(open_descriptors(&log), 1, "the stream holds the log open");
        drop(body);
        // Nothing is appended: the server must notice the closed connection on its own.
        let deadline = Instant::now() + Duration::from_secs(10);
        while open_descriptors(&log) > 0 {
            assert!(
                Instant::now() < deadline,
                "the log is still open 10 s after the client went away"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn stop_ends_follow_streams_and_the_server() {
        let ep = start().await;
        append(&ep.log("web-1"), "up\n");
        let resp = send(
            ep.addr,
            Method::GET,
            "/v1/logs/web-1?follow=true",
            Some(TOKEN),
        )
        .await;
        let mut body = resp.into_body();
        let mut seen = String::new();
        read_until(&mut body, &mut seen, |s| s == "up\n").await;
        ep.stop.send(true).unwrap();
        let end = tokio::time::timeout(Duration::from_secs(10), body.collect()).await;
        assert!(end.is_ok(), "the stream ends on stop");
        tokio::time::timeout(Duration::from_secs(10), ep.task)
            .await
            .expect("serve returns on stop")
            .unwrap();
    }

    #[test]
    fn log_queries_parse_follow_and_tail() {
        assert_eq!(parse_log_query(None), Ok(LogQuery::default()));
        assert_eq!(
            parse_log_query(Some("follow=true&tail=10")),
            Ok(LogQuery {
                follow: true,
                tail: Some(10)
            })
        );
        assert_eq!(
            parse_log_query(Some("follow=false&tail=-1")),
            Ok(LogQuery::default())
        );
        assert!(parse_log_query(Some("follow=maybe")).is_err());
    }
}
