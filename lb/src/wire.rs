//! HTTP/1.1 on the wire, as the proxy needs it on both sides: heads parsed with httparse into
//! one buffer (headers are spans of it, never copied), hop-by-hop headers told apart, and
//! bodies read by their framing (RFC 9112: `Content-Length`, chunked, or to the end of the
//! connection).

use std::io::{self, Write as _};
use std::ops::Range;

use bytes::{Buf, Bytes, BytesMut};
use http::Method;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The largest head read.
pub(crate) const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 100;
/// Bytes read at once.
pub(crate) const READ_CHUNK: usize = 16 * 1024;

/// Where a header's name and value are in its head.
pub(crate) type Span = (Range<usize>, Range<usize>);

/// Hop-by-hop headers concern one connection and are not forwarded (any case).
pub(crate) fn is_hop_by_hop(name: &[u8]) -> bool {
    const HOP: [&[u8]; 7] = [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    ];
    HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// What framing and connection headers say, read while parsing a head.
#[derive(Debug, Default)]
pub(crate) struct Meta {
    pub length: Option<u64>,
    pub chunked: bool,
    pub close: bool,
    pub keep_alive: bool,
    /// Other names the Connection headers list: hop-by-hop too (lower case).
    pub tokens: Vec<String>,
}

impl Meta {
    fn read(spans: &[Span], bytes: &[u8]) -> Result<Meta, String> {
        let mut m = Meta::default();
        for (n, v) in spans {
            let (name, value) = (&bytes[n.clone()], &bytes[v.clone()]);
            if name.eq_ignore_ascii_case(b"content-length") {
                let len = std::str::from_utf8(value)
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .ok_or("bad content-length")?;
                if m.length.is_some_and(|l| l != len) {
                    return Err("conflicting content-length".into());
                }
                m.length = Some(len);
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                let v = String::from_utf8_lossy(value).to_ascii_lowercase();
                m.chunked = v.trim_end().ends_with("chunked");
            } else if name.eq_ignore_ascii_case(b"connection") {
                let v = String::from_utf8_lossy(value).to_ascii_lowercase();
                for t in v.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                    match t {
                        "close" => m.close = true,
                        "keep-alive" => m.keep_alive = true,
                        t => m.tokens.push(t.to_owned()),
                    }
                }
            }
        }
        Ok(m)
    }

    /// Whether header `name` stays on this hop only.
    pub fn hop(&self, name: &[u8]) -> bool {
        is_hop_by_hop(name)
            || self
                .tokens
                .iter()
                .any(|t| t.as_bytes().eq_ignore_ascii_case(name))
    }
}

/// A client's request head.
pub(crate) struct RequestHead {
    pub bytes: Bytes,
    pub method: Method,
    pub target: Range<usize>,
    pub http10: bool,
    pub headers: Vec<Span>,
    pub meta: Meta,
}

impl RequestHead {
    pub fn target(&self) -> &str {
        std::str::from_utf8(&self.bytes[self.target.clone()]).unwrap_or("/")
    }

    pub fn path(&self) -> &str {
        let t = self.target();
        // An absolute-form target: the path after the authority.
        let t = t
            .strip_prefix("http://")
            .map_or(t, |rest| rest.find('/').map_or("/", |i| &rest[i..]));
        t.split('?').next().unwrap_or("/")
    }

    pub fn query(&self) -> Option<&str> {
        self.target().split_once('?').map(|(_, q)| q)
    }

    /// The origin-form target (path and query) to send on.
    pub fn origin_form(&self) -> &str {
        let t = self.target();
        t.strip_prefix("http://")
            .map_or(t, |rest| rest.find('/').map_or("/", |i| &rest[i..]))
    }

    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find_map(|(n, v)| {
            self.bytes[n.clone()]
                .eq_ignore_ascii_case(name.as_bytes())
                .then(|| &self.bytes[v.clone()])
        })
    }

    pub fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.headers
            .iter()
            .map(|(n, v)| (&self.bytes[n.clone()], &self.bytes[v.clone()]))
    }

    pub fn host(&self) -> &str {
        self.header("host")
            .and_then(|h| std::str::from_utf8(h).ok())
            .unwrap_or("")
    }

    /// Whether the client keeps the connection open after this request.
    pub fn keep_alive(&self) -> bool {
        !self.meta.close && (!self.http10 || self.meta.keep_alive)
    }

    /// How its body is framed.
    pub fn framing(&self) -> Framing {
        if self.meta.chunked {
            Framing::Chunked(Chunk::Size)
        } else {
            match self.meta.length {
                Some(n) if n > 0 => Framing::Length(n),
                _ => Framing::Done,
            }
        }
    }
}

/// A target's response head.
pub(crate) struct ResponseHead {
    pub bytes: Bytes,
    pub status: u16,
    pub http10: bool,
    pub headers: Vec<Span>,
    pub meta: Meta,
}

impl ResponseHead {
    pub fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.headers
            .iter()
            .map(|(n, v)| (&self.bytes[n.clone()], &self.bytes[v.clone()]))
    }

    /// How its body is framed, the request's method given.
    pub fn framing(&self, method: &Method) -> Framing {
        if *method == Method::HEAD
            || (100..200).contains(&self.status)
            || self.status == 204
            || self.status == 304
        {
            Framing::Done
        } else if self.meta.chunked {
            Framing::Chunked(Chunk::Size)
        } else {
            match self.meta.length {
                Some(0) => Framing::Done,
                Some(n) => Framing::Length(n),
                None => Framing::Close,
            }
        }
    }

    /// Whether the target keeps the connection open after this response.
    pub fn keep_alive(&self, framing: Framing) -> bool {
        framing != Framing::Close && !self.meta.close && (!self.http10 || self.meta.keep_alive)
    }
}

/// Reads more into `buf`; false at the end of the stream.
pub(crate) async fn fill(stream: &mut TcpStream, buf: &mut BytesMut) -> io::Result<bool> {
    buf.reserve(READ_CHUNK);
    Ok(stream.read_buf(buf).await? > 0)
}

fn span_of(base: usize, s: &[u8]) -> Range<usize> {
    let start = s.as_ptr() as usize - base;
    start..start + s.len()
}

/// Reads a request head; `None` when the client closed between requests.
pub(crate) async fn read_request(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
) -> Result<Option<RequestHead>, String> {
    loop {
        if !buf.is_empty() {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let base = buf.as_ptr() as usize;
                    let method = Method::from_bytes(req.method.unwrap_or("GET").as_bytes())
                        .map_err(|e| e.to_string())?;
                    let target = span_of(base, req.path.unwrap_or("/").as_bytes());
                    let http10 = req.version == Some(0);
                    let spans: Vec<Span> = req
                        .headers
                        .iter()
                        .map(|h| (span_of(base, h.name.as_bytes()), span_of(base, h.value)))
                        .collect();
                    let bytes = buf.split_to(len).freeze();
                    let meta = Meta::read(&spans, &bytes)?;
                    return Ok(Some(RequestHead {
                        bytes,
                        method,
                        target,
                        http10,
                        headers: spans,
                        meta,
                    }));
                }
                Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
                Ok(httparse::Status::Partial) => return Err("the request head is too large".into()),
                Err(e) => return Err(format!("bad request: {e}")),
            }
        }
        match fill(stream, buf).await {
            Ok(true) => {}
            Ok(false) if buf.is_empty() => return Ok(None),
            Ok(false) => return Err("the client closed in the middle of a request".into()),
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Why reading a response failed; `unanswered` when not a byte of it came.
#[derive(Debug)]
pub(crate) struct ReadError {
    pub error: String,
    pub unanswered: bool,
}

/// Reads a response head, skipping interim (1xx) ones.
pub(crate) async fn read_response(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
) -> Result<ResponseHead, ReadError> {
    let fail = |error: String, unanswered| ReadError { error, unanswered };
    loop {
        if !buf.is_empty() {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let base = buf.as_ptr() as usize;
                    let status = resp.code.unwrap_or(0);
                    let http10 = resp.version == Some(0);
                    let spans: Vec<Span> = resp
                        .headers
                        .iter()
                        .map(|h| (span_of(base, h.name.as_bytes()), span_of(base, h.value)))
                        .collect();
                    let bytes = buf.split_to(len).freeze();
                    if (100..200).contains(&status) && status != 101 {
                        continue;
                    }
                    let meta = Meta::read(&spans, &bytes).map_err(|e| fail(e, false))?;
                    return Ok(ResponseHead {
                        bytes,
                        status,
                        http10,
                        headers: spans,
                        meta,
                    });
                }
                Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
                Ok(httparse::Status::Partial) => {
                    return Err(fail("the response head is too large".into(), false));
                }
                Err(e) => return Err(fail(format!("bad response: {e}"), false)),
            }
        }
        let empty = buf.is_empty();
        match fill(stream, buf).await {
            Ok(true) => {}
            // Closed before a byte of answer: a keep-alive connection the target dropped.
            Ok(false) => return Err(fail("the target closed the connection".into(), empty)),
            Err(e) => return Err(fail(e.to_string(), empty)),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    Length(u64),
    Chunked(Chunk),
    /// Until the sender closes.
    Close,
    Done,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Chunk {
    /// The size line.
    Size,
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines up to an empty one.
    Trailers,
}

/// Reads a body piece by piece by its framing, from a stream and what was read already.
pub(crate) struct BodyReader {
    pub framing: Framing,
}

impl BodyReader {
    pub fn done(&self) -> bool {
        self.framing == Framing::Done
    }

    /// The next piece of the body; `None` at its end.
    pub async fn next(
        &mut self,
        stream: &mut TcpStream,
        buf: &mut BytesMut,
    ) -> Result<Option<Bytes>, String> {
        loop {
            match self.framing {
                Framing::Done => return Ok(None),
                Framing::Length(left) => {
                    if buf.is_empty() {
                        if !fill(stream, buf).await.map_err(|e| e.to_string())? {
                            return Err("the connection closed in the middle of a body".into());
                        }
                        continue;
                    }
                    let take = (left as usize).min(buf.len());
                    let left = left - take as u64;
                    self.framing = if left == 0 {
                        Framing::Done
                    } else {
                        Framing::Length(left)
                    };
                    return Ok(Some(buf.split_to(take).freeze()));
                }
                Framing::Close => {
                    if buf.is_empty() {
                        if !fill(stream, buf).await.map_err(|e| e.to_string())? {
                            self.framing = Framing::Done;
                            return Ok(None);
                        }
                        continue;
                    }
                    return Ok(Some(buf.split().freeze()));
                }
                Framing::Chunked(state) => match chunk_step(buf, state)? {
                    Step::Data(data, next) => {
                        self.framing = Framing::Chunked(next);
                        return Ok(Some(data));
                    }
                    Step::Next(Some(next)) => self.framing = Framing::Chunked(next),
                    Step::Next(None) => self.framing = Framing::Done,
                    Step::More => {
                        if !fill(stream, buf).await.map_err(|e| e.to_string())? {
                            return Err("the connection closed in the middle of a body".into());
                        }
                    }
                },
            }
        }
    }
}

pub(crate) enum Step {
    Data(Bytes, Chunk),
    /// The next state; `None` at the end of the body.
    Next(Option<Chunk>),
    /// The buffer holds too little.
    More,
}

/// One step of chunked decoding over what `buf` holds.
pub(crate) fn chunk_step(buf: &mut BytesMut, state: Chunk) -> Result<Step, String> {
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

/// Appends `data` as one chunk.
pub(crate) fn put_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    let _ = write!(out, "{:x}\r\n", data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
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
        let mut out = Vec::new();
        put_chunk(&mut out, b"hello, world");
        out.extend_from_slice(b"0\r\n\r\n");
        assert_eq!(decode(&out).unwrap(), b"hello, world");
    }

    #[test]
    fn hop_by_hop_names_in_any_case_and_connection_tokens() {
        let head = b"Connection: Keep-Alive, X-Private\r\nContent-Length: 5\r\n";
        let spans = vec![(0..10, 12..33), (35..49, 51..52)];
        let m = Meta::read(&spans, head).unwrap();
        assert!(m.keep_alive && !m.close);
        assert_eq!(m.length, Some(5));
        assert!(m.hop(b"x-private") && m.hop(b"TE") && m.hop(b"Transfer-Encoding"));
        assert!(!m.hop(b"content-length") && !m.hop(b"host"));
    }
}
