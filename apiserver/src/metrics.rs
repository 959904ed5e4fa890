//! Prometheus metrics of the API server, served on their own HTTP port at `/metrics`.

use prometheus_client::{
    encoding::{
        EncodeLabelSet,
        text::{encode_eof, encode_registry},
    },
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodCode {
    pub method: &'static str,
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Method {
    pub method: &'static str,
}

/// The server's metrics. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Registries of components running in the same process (the controllers), served on the
    /// same endpoint.
    extra: Arc<Mutex<Vec<Registry>>>,
    pub requests: Family<MethodCode, Counter>,
    pub latency: Family<Method, Histogram>,
    pub store_write: Histogram,
    pub watchers: Gauge,
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.0001, 2.0, 18)
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<MethodCode, Counter>::default();
        let latency =
            Family::<Method, Histogram>::new_with_constructor(|| Histogram::new(latency_buckets()));
        let store_write = Histogram::new(latency_buckets());
        let watchers = Gauge::default();
        registry.register(
            "hanul_apiserver_requests",
            "gRPC requests by method and status code",
            requests.clone(),
        );
        registry.register(
            "hanul_apiserver_request_duration_seconds",
            "gRPC request latency by method",
            latency.clone(),
        );
        registry.register(
            "hanul_apiserver_store_write_duration_seconds",
            "Latency of durable store writes (including the group-committed flush)",
            store_write.clone(),
        );
        registry.register(
            "hanul_apiserver_watchers",
            "Open watch streams",
            watchers.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            extra: Arc::default(),
            requests,
            latency,
            store_write,
            watchers,
        }
    }
}

impl Metrics {
    /// Records one finished request.
    pub fn observe(&self, method: &'static str, code: tonic::Code, elapsed: Duration) {
        self.requests
            .get_or_create(&MethodCode {
                method,
                code: code_name(code),
            })
            .inc();
        self.latency
            .get_or_create(&Method { method })
            .observe(elapsed.as_secs_f64());
    }

    /// Serves another component's metrics beside the server's.
    pub fn add_registry(&self, registry: Registry) {
        self.extra
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(registry);
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode_registry(&mut out, &self.registry);
        for r in self.extra.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = encode_registry(&mut out, r);
        }
        let _ = encode_eof(&mut out);
        out
    }
}

/// Serves `/metrics` (and `/healthz`) over HTTP/1 until the listener is dropped.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Metrics) {
    use http_body_util::Full;
    use hyper::{Response, body::Bytes, service::service_fn};
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                async move {
                    let (status, body) = match req.uri().path() {
                        "/metrics" => (200, metrics.render()),
                        "/healthz" => (200, "ok\n".to_string()),
                        _ => (404, "not found\n".to_string()),
                    };
                    Response::builder()
                        .status(status)
                        .header("content-type", "text/plain; version=0.0.4")
                        .body(Full::new(Bytes::from(body)))
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .await;
        });
    }
}

/// A gRPC code's name as the `code` label shows it (`Ok`, `NotFound`...), without allocating.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "Ok",
        Code::Cancelled => "Cancelled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}
