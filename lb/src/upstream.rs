//! The proxy's HTTP/1.1 client side, written for a proxy: the request head is encoded once
//! (hop-by-hop headers left out, the forwarded headers added while writing) so that it can be
//! sent again to another target as is, and the response body is read from the target's socket
//! by the very task that writes it to the client (no connection task, no channels), the
//! connection going back to the worker's pool the moment the body's last byte is read.
//!
//! Framing follows RFC 9112: a response to HEAD, a 1xx, 204 or 304 has no body;
//! `Transfer-Encoding: chunked` is decoded (trailers are dropped); else `Content-Length`; else
//! the body runs to the end of the connection (which is then not reused).

use std::error::Error as StdError;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version, request, response};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::http::InFlight;
use crate::pool::Pool;

/// The largest response head read.
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 100;
/// Bytes read from a target at once.
const READ_CHUNK: usize = 16 * 1024;

pub(crate) type BoxError = Box<dyn StdError + Send + Sync>;

/// A connection to a target, and what was read from it and not used yet.
pub(crate) struct Conn {
    stream: TcpStream,
    buf: BytesMut,
}

impl Conn {
    pub fn new(stream: TcpStream) -> Conn {
        Conn {
            stream,
            buf: BytesMut::with_capacity(READ_CHUNK),
        }
    }

    /// False when the target closed it (or sent something unasked) while it was idle, as far
    /// as the reactor knows: without readiness this makes no system call.
    pub fn is_open(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

/// Hop-by-hop headers: they concern one connection and are not forwarded.
pub(crate) fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// The names the Connection headers list: hop-by-hop too.
fn connection_tokens(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// What is forwarded of the client and its connection.
pub(crate) struct Forwarded<'a> {
    /// The client's IP.
    pub ip: &'a HeaderValue,
    /// The listener's port.
    pub port: &'a HeaderValue,
}

/// Encodes the request head for the target: the origin-form target, the client's headers
/// but hop-by-hop ones, `X-Forwarded-For` (appended to), `-Proto` and `-Port`, and the framing
/// of the body: its `Content-Length` if the client gave one, else chunked when there is one.
pub(crate) fn encode_head(
    parts: &request::Parts,
    has_body: bool,
    forwarded: &Forwarded<'_>,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let tokens = if parts.headers.contains_key(http::header::CONNECTION) {
        connection_tokens(&parts.headers)
    } else {
        Vec::new()
    };
    let mut length = false;
    let mut xff = false;
    let mut host = false;
    for (name, value) in &parts.headers {
        let n = name.as_str();
        if is_hop_by_hop(n) || tokens.iter().any(|t| t == n) {
            continue;
        }
        match n {
            "x-forwarded-proto" | "x-forwarded-port" => continue,
            "x-forwarded-for" => {
                // Appended to, as ELB does.
                xff = true;
                out.extend_from_slice(b"x-forwarded-for: ");
                out.extend_from_slice(value.as_bytes());
                out.extend_from_slice(b", ");
                out.extend_from_slice(forwarded.ip.as_bytes());
                out.extend_from_slice(b"\r\n");
                continue;
            }
            "content-length" => length = true,
            "host" => host = true,
            _ => {}
        }
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !host && let Some(authority) = parts.uri.authority() {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(authority.as_str().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !xff {
        out.extend_from_slice(b"x-forwarded-for: ");
        out.extend_from_slice(forwarded.ip.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"x-forwarded-proto: http\r\nx-forwarded-port: ");
    out.extend_from_slice(forwarded.port.as_bytes());
    out.extend_from_slice(b"\r\n");
    if has_body && !length {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Why an exchange failed; `retry` when the target cannot have acted on the request (a
/// reused connection that was closed before it answered anything).
#[derive(Debug)]
pub(crate) struct ExchangeError {
    pub error: String,
    pub unanswered: bool,
}

/// What the target answered: the head, and how to read the body.
pub(crate) struct Answer {
    pub head: response::Parts,
    pub plan: Plan,
}

/// How a response body is framed, and whether its connection can be reused after it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Plan {
    framing: Framing,
    keep_alive: bool,
}

/// Sends the head (and the body, if any) and reads the response head.
pub(crate) async fn exchange(
    conn: &mut Conn,
    head: &[u8],
    body: Option<Incoming>,
    method: &Method,
) -> Result<Answer, ExchangeError> {
    let failed = |e: &dyn std::fmt::Display, unanswered| ExchangeError {
        error: e.to_string(),
        unanswered,
    };
    conn.stream
        .write_all(head)
        .await
        .map_err(|e| failed(&e, true))?;
    if let Some(body) = body {
        send_body(&mut conn.stream, body, head)
            .await
            .map_err(|e| failed(&*e, false))?;
    }
    loop {
        // Parse for the length and where each header is, then take the head out of the
        // buffer whole: header values are slices of it, not copies.
        let (code, version, spans, len) = loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(&conn.buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let base = conn.buf.as_ptr() as usize;
                    let span = |s: &[u8]| {
                        let start = s.as_ptr() as usize - base;
                        start..start + s.len()
                    };
                    let spans: Vec<Span> = response
                        .headers
                        .iter()
                        .map(|h| (span(h.name.as_bytes()), span(h.value)))
                        .collect();
                    break (response.code, response.version, spans, len);
                }
                Ok(httparse::Status::Partial) if conn.buf.len() < MAX_HEAD => {}
                Ok(httparse::Status::Partial) => {
                    return Err(failed(&"the response head is too large", false));
                }
                Err(e) => return Err(failed(&format!("bad response: {e}"), false)),
            }
            conn.buf.reserve(READ_CHUNK);
            match conn.stream.read_buf(&mut conn.buf).await {
                // Closed before a byte of answer: a keep-alive connection the target dropped.
                Ok(0) => {
                    return Err(failed(
                        &"the target closed the connection",
                        conn.buf.is_empty(),
                    ));
                }
                Ok(_) => {}
                Err(e) => return Err(failed(&e, conn.buf.is_empty())),
            }
        };
        let bytes = conn.buf.split_to(len).freeze();
        let (head, framing, keep_alive) =
            build_head(code, version, &spans, &bytes, method).map_err(|e| failed(&e, false))?;
        // An interim response (100 Continue...): the final one follows.
        if head.status.is_informational() && head.status != StatusCode::SWITCHING_PROTOCOLS {
            continue;
        }
        return Ok(Answer {
            head,
            plan: Plan {
                framing,
                keep_alive,
            },
        });
    }
}

/// Streams the client's body: as is when the head carries its length, else chunked.
async fn send_body(
    stream: &mut TcpStream,
    mut body: Incoming,
    head: &[u8],
) -> Result<(), BoxError> {
    let chunked = head
        .windows(b"transfer-encoding: chunked".len())
        .any(|w| w == b"transfer-encoding: chunked");
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue; // trailers are not forwarded
        };
        if data.is_empty() {
            continue;
        }
        if chunked {
            stream
                .write_all(format!("{:x}\r\n", data.len()).as_bytes())
                .await?;
            stream.write_all(&data).await?;
            stream.write_all(b"\r\n").await?;
        } else {
            stream.write_all(&data).await?;
        }
    }
    if chunked {
        stream.write_all(b"0\r\n\r\n").await?;
    }
    Ok(())
}

/// Where a header's name and value are in the head.
type Span = (std::ops::Range<usize>, std::ops::Range<usize>);

fn build_head(
    code: Option<u16>,
    version: Option<u8>,
    spans: &[Span],
    bytes: &Bytes,
    method: &Method,
) -> Result<(response::Parts, Framing, bool), String> {
    let status = StatusCode::from_u16(code.unwrap_or(0)).map_err(|e| e.to_string())?;
    let http10 = version == Some(0);
    let (mut response, ()) = http::Response::new(()).into_parts();
    response.status = status;
    response.version = Version::HTTP_11;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut close = http10;
    let mut tokens: Vec<String> = Vec::new();
    response.headers.reserve(spans.len());
    for (name_at, value_at) in spans {
        let raw = &bytes[value_at.clone()];
        let name = HeaderName::from_bytes(&bytes[name_at.clone()]).map_err(|e| e.to_string())?;
        let value = HeaderValue::from_maybe_shared(bytes.slice(value_at.clone()))
            .map_err(|e| e.to_string())?;
        match name.as_str() {
            "content-length" => {
                let n = std::str::from_utf8(raw)
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .ok_or("bad content-length")?;
                if length.is_some_and(|l| l != n) {
                    return Err("conflicting content-length".into());
                }
                length = Some(n);
            }
            "transfer-encoding" => {
                chunked = std::str::from_utf8(raw)
                    .map(|v| v.to_ascii_lowercase().trim_end().ends_with("chunked"))
                    .unwrap_or(false);
                continue;
            }
            "connection" => {
                let v = String::from_utf8_lossy(raw).to_ascii_lowercase();
                for t in v.split(',').map(str::trim) {
                    match t {
                        "close" => close = true,
                        "keep-alive" if http10 => close = false,
                        _ => {}
                    }
                    tokens.push(t.to_owned());
                }
                continue;
            }
            n if is_hop_by_hop(n) => continue,
            _ => {}
        }
        response.headers.append(name, value);
    }
    for t in tokens {
        response.headers.remove(t.as_str());
    }
    let framing = if *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Framing::Done
    } else if chunked {
        Framing::Chunked(Chunk::Size)
    } else if let Some(n) = length {
        if n == 0 {
            Framing::Done
        } else {
            Framing::Length(n)
        }
    } else {
        close = true;
        Framing::Close
    };
    Ok((response, framing, !close))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked(Chunk),
    /// Until the target closes.
    Close,
    Done,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    /// The size line.
    Size,
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines up to an empty one.
    Trailers,
}

/// A target's response body, read straight from its connection. The request counts as in
/// flight until the body is dropped.
pub(crate) struct UpstreamBody {
    conn: Option<Conn>,
    framing: Framing,
    keep_alive: bool,
    pool: Arc<Pool>,
    pub(crate) guard: InFlight,
}

impl UpstreamBody {
    pub fn new(conn: Conn, plan: Plan, pool: Arc<Pool>, guard: InFlight) -> UpstreamBody {
        let mut body = UpstreamBody {
            conn: Some(conn),
            framing: plan.framing,
            keep_alive: plan.keep_alive,
            pool,
            guard,
        };
        if body.framing == Framing::Done {
            body.finish();
        }
        body
    }

    /// The body is read whole: the connection goes back to the pool if it can be reused.
    fn finish(&mut self) {
        self.framing = Framing::Done;
        if let Some(conn) = self.conn.take()
            && self.keep_alive
            && conn.buf.is_empty()
        {
            self.pool.checkin(&self.guard.0.address, conn);
        }
    }

    /// Reads more from the target; Ok(false) at its end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(Ok(false));
        };
        let mut scratch = [0u8; READ_CHUNK];
        let mut read = ReadBuf::new(&mut scratch);
        ready!(Pin::new(&mut conn.stream).poll_read(cx, &mut read))?;
        if read.filled().is_empty() {
            return Poll::Ready(Ok(false));
        }
        conn.buf.extend_from_slice(read.filled());
        Poll::Ready(Ok(true))
    }
}

fn unexpected_end() -> BoxError {
    "the target closed the connection in the middle of the body".into()
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            let available = this.conn.as_ref().map_or(0, |c| c.buf.len());
            match this.framing {
                Framing::Done => return Poll::Ready(None),
                Framing::Length(left) => {
                    if available == 0 {
                        if !ready!(this.poll_fill(cx))? {
                            return Poll::Ready(Some(Err(unexpected_end())));
                        }
                        continue;
                    }
                    let take = (left as usize).min(available);
                    let data = this.conn.as_mut().map(|c| c.buf.split_to(take).freeze());
                    let left = left - take as u64;
                    if left == 0 {
                        this.finish();
                    } else {
                        this.framing = Framing::Length(left);
                    }
                    return Poll::Ready(data.map(|d| Ok(Frame::data(d))));
                }
                Framing::Close => {
                    if available == 0 {
                        if !ready!(this.poll_fill(cx))? {
                            this.keep_alive = false;
                            this.finish();
                            return Poll::Ready(None);
                        }
                        continue;
                    }
                    let data = this.conn.as_mut().map(|c| c.buf.split().freeze());
                    return Poll::Ready(data.map(|d| Ok(Frame::data(d))));
                }
                Framing::Chunked(state) => {
                    let Some(conn) = this.conn.as_mut() else {
                        return Poll::Ready(None);
                    };
                    match chunk_step(&mut conn.buf, state) {
                        Ok(Step::Data(data, next)) => {
                            this.framing = Framing::Chunked(next);
                            return Poll::Ready(Some(Ok(Frame::data(data))));
                        }
                        Ok(Step::Next(Some(next))) => this.framing = Framing::Chunked(next),
                        Ok(Step::Next(None)) => {
                            this.finish();
                            return Poll::Ready(None);
                        }
                        Ok(Step::More) => {
                            if !ready!(this.poll_fill(cx))? {
                                return Poll::Ready(Some(Err(unexpected_end())));
                            }
                        }
                        Err(e) => return Poll::Ready(Some(Err(e.into()))),
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing == Framing::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

enum Step {
    Data(Bytes, Chunk),
    /// The next state; `None` at the end of the body.
    Next(Option<Chunk>),
    /// The buffer holds too little.
    More,
}

/// One step of chunked decoding over what `buf` holds.
fn chunk_step(buf: &mut BytesMut, state: Chunk) -> Result<Step, String> {
    let line_end = |buf: &BytesMut| buf.windows(2).position(|w| w == b"\r\n");
    match state {
        Chunk::Size => {
            let Some(end) = line_end(buf) else {
                return if buf.len() > 4096 {
                    Err("a chunk size line is too long".into())
                } else {
                    Ok(Step::More)
                };
            };
            let line = std::str::from_utf8(&buf[..end]).map_err(|e| e.to_string())?;
            let hex = line.split(';').next().unwrap_or("").trim();
            let size =
                u64::from_str_radix(hex, 16).map_err(|_| format!("bad chunk size {hex:?}"))?;
            buf.advance(end + 2);
            Ok(Step::Next(Some(if size == 0 {
                Chunk::Trailers
            } else {
                Chunk::Data(size)
            })))
        }
        Chunk::Data(left) => {
            if buf.is_empty() {
                return Ok(Step::More);
            }
            let take = (left as usize).min(buf.len());
            let data = buf.split_to(take).freeze();
            let left = left - take as u64;
            Ok(Step::Data(
                data,
                if left == 0 {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left)
                },
            ))
        }
        Chunk::DataEnd => {
            if buf.len() < 2 {
                return Ok(Step::More);
            }
            if &buf[..2] != b"\r\n" {
                return Err("a chunk does not end with CRLF".into());
            }
            buf.advance(2);
            Ok(Step::Next(Some(Chunk::Size)))
        }
        Chunk::Trailers => {
            let Some(end) = line_end(buf) else {
                return Ok(Step::More);
            };
            buf.advance(end + 2);
            Ok(Step::Next(if end == 0 {
                None
            } else {
                Some(Chunk::Trailers)
            }))
        }
    }
}

pub(crate) async fn connect(address: &str) -> io::Result<Conn> {
    let stream = TcpStream::connect(address).await?;
    let _ = stream.set_nodelay(true);
    Ok(Conn::new(stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(wire: &[u8]) -> Result<Vec<u8>, String> {
        let mut buf = BytesMut::from(wire);
        let mut state = Chunk::Size;
        let mut out = Vec::new();
        loop {
            match chunk_step(&mut buf, state)? {
                Step::Data(d, next) => {
                    out.extend_from_slice(&d);
                    state = next;
                }
                Step::Next(Some(next)) => state = next,
                Step::Next(None) => return Ok(out),
                Step::More => return Err("more".into()),
            }
        }
    }

    #[test]
    fn chunked_bodies_are_decoded_with_extensions_and_trailers() {
        assert_eq!(
            decode(b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nx-trailer: 1\r\n\r\n").unwrap(),
            b"hello, world"
        );
        assert_eq!(decode(b"0\r\n\r\n").unwrap(), b"");
        assert_eq!(decode(b"5\r\nhel").unwrap_err(), "more");
        assert!(decode(b"zz\r\n").is_err());
        assert!(decode(b"2\r\nhiXX").is_err());
    }

    #[test]
    fn the_head_drops_hop_by_hop_headers_and_adds_forwarded_ones() {
        let req = http::Request::get("http://web.example/a?b=1")
            .header("connection", "keep-alive, x-private")
            .header("x-private", "1")
            .header("keep-alive", "timeout=5")
            .header("host", "web.example")
            .header("x-forwarded-for", "10.0.0.1")
            .header("x-forwarded-proto", "https")
            .header("accept", "*/*")
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        let ip = HeaderValue::from_static("192.168.1.5");
        let port = HeaderValue::from_static("8080");
        let mut out = Vec::new();
        encode_head(
            &parts,
            false,
            &Forwarded {
                ip: &ip,
                port: &port,
            },
            &mut out,
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("GET /a?b=1 HTTP/1.1\r\n"), "{text}");
        for want in [
            "host: web.example\r\n",
            "x-forwarded-for: 10.0.0.1, 192.168.1.5\r\n",
            "x-forwarded-proto: http\r\n",
            "x-forwarded-port: 8080\r\n",
            "accept: */*\r\n",
        ] {
            assert!(text.contains(want), "{want:?} in {text}");
        }
        for gone in [
            "x-private",
            "keep-alive",
            "connection",
            "https",
            "transfer-encoding",
        ] {
            assert!(!text.contains(gone), "{gone:?} in {text}");
        }
        assert!(text.ends_with("\r\n\r\n"));
        let mut out = Vec::new();
        encode_head(
            &parts,
            true,
            &Forwarded {
                ip: &ip,
                port: &port,
            },
            &mut out,
        );
        assert!(
            String::from_utf8(out)
                .unwrap()
                .contains("transfer-encoding: chunked\r\n")
        );
    }
}
