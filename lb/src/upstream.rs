//! The proxy's side towards targets: connections (pooled per worker, see [`crate::pool`]) and
//! the request head sent on them, encoded once from the client's so that a retry sends the
//! same bytes to another target.

use std::io::{self, Write as _};

use bytes::BytesMut;
use tokio::net::TcpStream;

use crate::wire::{READ_CHUNK, RequestHead};

/// A connection to a target, and what was read from it and not used yet.
pub(crate) struct Conn {
    pub stream: TcpStream,
    pub buf: BytesMut,
}

impl Conn {
    /// False when the target closed it (or sent something unasked) while it was idle, as far
    /// as the reactor knows: without readiness this makes no system call.
    pub fn is_open(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

pub(crate) async fn connect(address: &str) -> io::Result<Conn> {
    let stream = TcpStream::connect(address).await?;
    let _ = stream.set_nodelay(true);
    Ok(Conn {
        stream,
        buf: BytesMut::with_capacity(READ_CHUNK),
    })
}

/// Encodes the request head for a target: the origin-form target, the client's headers but
/// hop-by-hop ones (and `Expect` when the proxy answered it), `X-Forwarded-For` (appended to),
/// `-Proto` and `-Port`, and chunked framing when the client's body is chunked.
pub(crate) fn encode_head(req: &RequestHead, ip: &str, port: u16, drop_expect: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(req.bytes.len() + 128);
    out.extend_from_slice(req.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.origin_form().as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut xff = false;
    for (name, value) in req.headers() {
        // With chunked framing a Content-Length is not sent along (RFC 9112 6.3: chunked
        // wins; both would let the target read the body differently from the proxy).
        if req.meta.hop(name)
            || (req.meta.chunked && name.eq_ignore_ascii_case(b"content-length"))
            || name.eq_ignore_ascii_case(b"x-forwarded-proto")
            || name.eq_ignore_ascii_case(b"x-forwarded-port")
            || (drop_expect && name.eq_ignore_ascii_case(b"expect"))
        {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        if name.eq_ignore_ascii_case(b"x-forwarded-for") {
            // Appended to, as ELB does.
            xff = true;
            out.extend_from_slice(b", ");
            out.extend_from_slice(ip.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }
    if !xff {
        out.extend_from_slice(b"x-forwarded-for: ");
        out.extend_from_slice(ip.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"x-forwarded-proto: http\r\nx-forwarded-port: ");
    let _ = write!(out, "{port}");
    out.extend_from_slice(b"\r\n");
    if req.meta.chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}
