//! The application load balancer's listener: an HTTP/1.1 reverse proxy on hyper.
//!
//! Per request: the listener's rules pick an action (forward to a target group, a fixed
//! response, a redirect); the group picks a healthy target (its sticky cookie's if that one is
//! healthy); the request goes to the target over the worker's keep-alive pool with hop-by-hop
//! headers removed, `Host` kept and `X-Forwarded-For`/`-Proto`/`-Port` added. A request is
//! tried on another healthy target when its target refuses the connection or a pooled
//! connection closes before taking it (nothing was sent), and, as nginx's
//! `proxy_next_upstream error`, when it has no body and an idempotent method and its target
//! fails before answering. The load balancer answers itself with 503 when no target is healthy,
//! 502 when the target fails, 504 when it does not answer in time.
//!
//! Rules and targets are read per request from snapshots the data plane swaps, so changes apply
//! to open connections at their next request without closing them.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::debug;

use crate::config::{Action, ListenerConfig, Stickiness};
use crate::group::{Group, Target};
use crate::metrics::ListenerMetrics;
use crate::pool::Pool;
use crate::rules;
use crate::upstream::{self, BoxError, UpstreamBody};

/// The cookie an lb_cookie group pins clients with (ELB's is AWSALB).
pub const LB_COOKIE: &str = "HANULLB";
/// The cookie an app_cookie group pins clients with once the target set the app's cookie
/// (ELB's is AWSALBAPP).
pub const APP_COOKIE: &str = "HANULLBAPP";
/// How long a target gets to answer (ELB's idle timeout is 60 s).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How many other targets a failed request without a body is tried on.
const MAX_RETRIES: usize = 3;

/// What a listener routes with; swapped whole on every change.
#[derive(Clone)]
pub(crate) struct Routes {
    pub config: ListenerConfig,
    pub groups: Arc<HashMap<String, Arc<Group>>>,
}

pub(crate) struct HttpListener {
    pub routes: RwLock<Arc<Routes>>,
    pub metrics: Arc<ListenerMetrics>,
    pool: Arc<Pool>,
}

impl HttpListener {
    pub fn new(routes: Routes, metrics: Arc<ListenerMetrics>, pool: Arc<Pool>) -> Self {
        HttpListener {
            routes: RwLock::new(Arc::new(routes)),
            metrics,
            pool,
        }
    }
}

/// Accepts connections until `stop` fires; open connections carry on to their end.
pub(crate) async fn serve(
    listener: TcpListener,
    state: Arc<HttpListener>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            state
                .metrics
                .new_connections
                .fetch_add(1, Ordering::Relaxed);
            state
                .metrics
                .active_connections
                .fetch_add(1, Ordering::Relaxed);
            let port = state.routes.read().unwrap().config.port;
            let client = Arc::new(Client::new(peer, port));
            let service = {
                let state = state.clone();
                service_fn(move |req| {
                    let state = state.clone();
                    let client = client.clone();
                    async move { Ok::<_, Infallible>(state.handle(req, &client).await) }
                })
            };
            if let Err(e) = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(error = %e, %peer, "client connection ended with an error");
            }
            state
                .metrics
                .active_connections
                .fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// What every request of one client connection shares.
struct Client {
    /// The client's IP, for X-Forwarded-For.
    ip: HeaderValue,
    /// The listener's port, for X-Forwarded-Port.
    port: HeaderValue,
}

impl Client {
    fn new(peer: SocketAddr, port: u16) -> Client {
        Client {
            ip: HeaderValue::from_str(&peer.ip().to_string())
                .unwrap_or(HeaderValue::from_static("unknown")),
            port: HeaderValue::from(port),
        }
    }
}

impl HttpListener {
    async fn handle(&self, req: Request<Incoming>, client: &Client) -> Response<ProxyBody> {
        let routes = self.routes.read().unwrap().clone();
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .or(req.uri().host())
            .unwrap_or("");
        let group = match rules::route(&routes.config.rules, host, req.uri().path()) {
            None => &routes.config.default_group,
            Some(Action::Forward(group)) => group,
            Some(Action::Fixed {
                status,
                content_type,
                body,
            }) => return fixed(*status, content_type, body.clone()),
            Some(redirect @ Action::Redirect { .. }) => {
                return redirect_to(redirect, &req, host, routes.config.port);
            }
        };
        match routes.groups.get(group) {
            Some(group) => self.forward(group, req, client).await,
            None => elb_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the target group does not exist",
            ),
        }
    }

    async fn forward(
        &self,
        group: &Arc<Group>,
        req: Request<Incoming>,
        client: &Client,
    ) -> Response<ProxyBody> {
        group.metrics.request();
        let (stickiness, algorithm) = group.request_settings();
        let sticky_cookie = match &stickiness {
            Some(Stickiness::LbCookie { .. }) => Some(LB_COOKIE),
            Some(Stickiness::AppCookie { .. }) => Some(APP_COOKIE),
            None => None,
        };
        let sticky = sticky_cookie.and_then(|name| cookie(req.headers(), name));
        let (parts, body) = req.into_parts();
        let has_body = !body.is_end_stream();
        // Encoded once: the same bytes go to whichever target takes the request.
        let mut head = Vec::with_capacity(512);
        upstream::encode_head(
            &parts,
            has_body,
            &upstream::Forwarded {
                ip: &client.ip,
                port: &client.port,
            },
            &mut head,
        );
        // Without a body and with an idempotent method a request may be sent again when its
        // target fails before answering, as nginx's `proxy_next_upstream error`.
        let resend = !has_body && parts.method.is_idempotent();
        let mut body = has_body.then_some(body);
        let mut tried: Vec<Arc<Target>> = Vec::new();
        loop {
            let Some(target) = group.pick(algorithm, sticky.as_deref(), &tried) else {
                group.metrics.elb_error(503);
                return elb_error(StatusCode::SERVICE_UNAVAILABLE, "no healthy target");
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
            let exchange = upstream::exchange(&mut conn, &head, body.take(), &parts.method);
            match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
                Ok(Ok(upstream::Answer { mut head, plan })) => {
                    group
                        .metrics
                        .target_response(head.status.as_u16(), started.elapsed());
                    stick(&mut head.headers, &stickiness, target, sticky.as_deref());
                    let body = UpstreamBody::new(conn, plan, self.pool.clone(), guard);
                    return Response::from_parts(head, ProxyBody::Upstream(body));
                }
                Ok(Err(e))
                    if (resend || (e.unanswered && !has_body)) && tried.len() < MAX_RETRIES =>
                {
                    debug!(target = %target.address, error = %e.error, "target failed; trying another");
                    tried.push(target.clone());
                }
                Ok(Err(e)) => {
                    debug!(target = %target.address, error = %e.error, "target failed");
                    group.metrics.elb_error(502);
                    return elb_error(StatusCode::BAD_GATEWAY, "the target failed to answer");
                }
                Err(_) => {
                    group.metrics.elb_error(504);
                    return elb_error(
                        StatusCode::GATEWAY_TIMEOUT,
                        "the target did not answer in time",
                    );
                }
            }
        }
    }
}

/// Counts a request against its target until the response body is done.
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

/// The bodies the proxy sends both ways.
pub(crate) enum ProxyBody {
    /// The load balancer's own answers.
    Full(Option<Bytes>),
    /// A target's response.
    Upstream(UpstreamBody),
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ProxyBody::Upstream(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(data) => data.is_none(),
            ProxyBody::Upstream(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            ProxyBody::Upstream(body) => body.size_hint(),
        }
    }
}

/// The value of cookie `name` in the request's Cookie headers.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then(|| v.trim().to_owned())
        })
}

/// Adds the stickiness cookie to a target's response: always for lb_cookie (which refreshes
/// its expiry), for app_cookie when the target set the application's cookie.
fn stick(
    headers: &mut HeaderMap,
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
            let set = headers
                .get_all(header::SET_COOKIE)
                .iter()
                .any(|v| v.as_bytes().starts_with(prefix.as_bytes()));
            // A client whose pinned target failed is pinned again to the new one.
            let moved = sent.is_some_and(|s| s != target.cookie);
            if !set && !moved {
                return;
            }
            (APP_COOKIE, duration)
        }
    };
    let value = format!(
        "{name}={}; Max-Age={}; Path=/",
        target.cookie,
        duration.as_secs()
    );
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.append(header::SET_COOKIE, v);
    }
}

fn full(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::Full(Some(body.into())));
    *response.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    response
        .headers_mut()
        .insert(header::SERVER, HeaderValue::from_static("hanul-elb"));
    response
}

fn elb_error(status: StatusCode, why: &str) -> Response<ProxyBody> {
    full(
        status,
        "text/plain; charset=utf-8",
        format!("{status}: {why}\n"),
    )
}

fn fixed(status: u16, content_type: &str, body: String) -> Response<ProxyBody> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    let content_type = if content_type.is_empty() {
        "text/plain"
    } else {
        content_type
    };
    full(status, content_type, body)
}

fn redirect_to(
    action: &Action,
    req: &Request<Incoming>,
    host: &str,
    listener_port: u16,
) -> Response<ProxyBody> {
    let Action::Redirect {
        protocol,
        host: to_host,
        port,
        path,
        status,
    } = action
    else {
        return elb_error(StatusCode::INTERNAL_SERVER_ERROR, "not a redirect");
    };
    let scheme = protocol.as_deref().unwrap_or("HTTP").to_ascii_lowercase();
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
    let path = path.as_deref().unwrap_or(req.uri().path());
    let query = req
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let location = format!("{scheme}://{authority}{path}{query}");
    let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::FOUND);
    let mut response = full(status, "text/plain", "");
    if let Ok(v) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1; HANULLB=abc"));
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        assert_eq!(cookie(&h, LB_COOKIE).as_deref(), Some("abc"));
        assert_eq!(cookie(&h, "b").as_deref(), Some("2"));
        assert_eq!(cookie(&h, "c"), None);
    }
}
