//! The gRPC `ObjectService`: request parsing, metrics and status mapping around the
//! [`Registry`] (and [`AgentLogs`] for `Logs`). Authentication is an interceptor added in
//! [`crate::server`].

use crate::{error::Error, logs::AgentLogs, metrics::Metrics, registry::Registry};
use futures::{FutureExt as _, StreamExt};
use hanul_proto::{
    Fields, Kind, Selector,
    v1::{
        ApplyRequest, ApplyResponse, CreateRequest, DeleteRequest, DeleteResponse, EventType,
        GetRequest, ListRequest, ListResponse, LogsRequest, Object, UpdateRequest, WatchEvent,
        WatchRequest, object_service_server::ObjectService,
    },
};
use std::{
    pin::Pin,
    time::{Duration, Instant},
};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// How often an idle watch with bookmarks enabled gets a BOOKMARK carrying the revision.
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(5);

/// The object service over a registry.
#[derive(Clone)]
pub struct ObjectApi {
    registry: Registry,
    metrics: Metrics,
    logs: AgentLogs,
}

impl ObjectApi {
    /// The service; `Logs` authenticates to agents with `join_token`.
    pub fn new(registry: Registry, metrics: Metrics, join_token: &str) -> Self {
        let logs = AgentLogs::new(registry.clone(), join_token);
        ObjectApi {
            registry,
            metrics,
            logs,
        }
    }

    /// Runs one call, recording its latency and result code.
    async fn timed<T>(
        &self,
        method: &'static str,
        f: impl Future<Output = Result<T, Error>>,
    ) -> Result<Response<T>, Status> {
        let start = Instant::now();
        let result = f.await.map_err(Status::from);
        let code = result
            .as_ref()
            .map(|_| tonic::Code::Ok)
            .unwrap_or_else(|s| s.code());
        self.metrics.observe(method, code, start.elapsed());
        result.map(Response::new)
    }
}

fn parse_kind(kind: &str) -> Result<Kind, Error> {
    Kind::ALL
        .iter()
        .copied()
        .find(|k| k.as_str() == kind)
        .or_else(|| Kind::lookup(kind))
        .ok_or_else(|| {
            Error::invalid(
                "kind",
                format!(
                    "unknown kind {kind:?}; known: {}",
                    Kind::ALL
                        .iter()
                        .map(|k| k.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })
}

fn parse_optional_kind(kind: &str) -> Result<Option<Kind>, Error> {
    if kind.is_empty() {
        Ok(None)
    } else {
        parse_kind(kind).map(Some)
    }
}

fn parse_selector(s: &str) -> Result<Selector, Error> {
    Selector::parse(s).map_err(|m| Error::invalid("labelSelector", m))
}

fn required(o: Option<Object>) -> Result<Object, Error> {
    match o {
        Some(o) if o.kind().is_some() => Ok(o),
        _ => Err(Error::invalid("object", "required")),
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, Status>> + Send>>;

#[tonic::async_trait]
impl ObjectService for ObjectApi {
    async fn apply(&self, req: Request<ApplyRequest>) -> Result<Response<ApplyResponse>, Status> {
        let r = req.into_inner();
        self.timed("Apply", async {
            let (object, result) = self
                .registry
                .apply_with(required(r.object)?, r.dry_run, &r.also_instance_types)
                .await?;
            Ok(ApplyResponse {
                object: Some(object),
                result: result as i32,
            })
        })
        .await
    }

    async fn create(&self, req: Request<CreateRequest>) -> Result<Response<Object>, Status> {
        let r = req.into_inner();
        self.timed("Create", async {
            self.registry.create(required(r.object)?, r.dry_run).await
        })
        .await
    }

    async fn get(&self, req: Request<GetRequest>) -> Result<Response<Object>, Status> {
        let r = req.into_inner();
        self.timed("Get", async {
            self.registry.get(parse_kind(&r.kind)?, &r.name).await
        })
        .await
    }

    async fn list(&self, req: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let r = req.into_inner();
        self.timed("List", async {
            let (items, revision) = self
                .registry
                .list(
                    parse_optional_kind(&r.kind)?,
                    &parse_selector(&r.label_selector)?,
                    fields(r.metadata_only),
                )
                .await?;
            Ok(ListResponse { items, revision })
        })
        .await
    }

    async fn update(&self, req: Request<UpdateRequest>) -> Result<Response<Object>, Status> {
        let r = req.into_inner();
        self.timed("Update", async {
            self.registry.update(required(r.object)?, r.dry_run).await
        })
        .await
    }

    async fn update_status(&self, req: Request<UpdateRequest>) -> Result<Response<Object>, Status> {
        let r = req.into_inner();
        self.timed("UpdateStatus", async {
            self.registry
                .update_status(required(r.object)?, r.dry_run)
                .await
        })
        .await
    }

    async fn delete(
        &self,
        req: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let r = req.into_inner();
        self.timed("Delete", async {
            let (object, removed) = self
                .registry
                .delete(parse_kind(&r.kind)?, &r.name, r.resource_version, r.dry_run)
                .await?;
            Ok(DeleteResponse {
                object: Some(object),
                removed,
            })
        })
        .await
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        req: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let r = req.into_inner();
        let start = Instant::now();
        let opened = (|| {
            let kind = parse_optional_kind(&r.kind)?;
            let selector = parse_selector(&r.label_selector)?;
            self.registry
                .watch(kind, selector, r.since_revision, fields(r.metadata_only))
        })()
        .map_err(Status::from);
        let code = opened
            .as_ref()
            .map(|_| tonic::Code::Ok)
            .unwrap_or_else(|s| s.code());
        self.metrics.observe("Watch", code, start.elapsed());
        let mut events = opened?;

        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let store = self.registry.store().clone();
        let watchers = self.metrics.watchers.clone();
        let bookmarks = r.bookmarks;
        watchers.inc();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(BOOKMARK_INTERVAL);
            tick.reset();
            loop {
                tokio::select! {
                    // Events first: a bookmark names the store's revision, so it must not pass
                    // an event that is already waiting (a client resuming from the bookmark
                    // would never see that event).
                    biased;
                    ev = events.next() => {
                        if !forward(&tx, ev).await {
                            break;
                        }
                        tick.reset();
                    }
                    _ = tick.tick(), if bookmarks => {
                        // The revision first, then every event already waiting: the hub hands
                        // each event to its watches before the store's revision reaches it, so
                        // all those up to this revision are waiting now, and go out before the
                        // bookmark. (An event published after the read is newer than it.)
                        let revision = store.revision();
                        let mut open = true;
                        while let Some(ev) = events.next().now_or_never() {
                            open = forward(&tx, ev).await;
                            if !open {
                                break;
                            }
                        }
                        let ev = WatchEvent { r#type: EventType::Bookmark as i32, object: None, revision };
                        if !open || tx.send(Ok(ev)).await.is_err() {
                            break;
                        }
                    }
                    _ = tx.closed() => break,
                }
            }
            watchers.dec();
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    type LogsStream = crate::logs::LogStream;

    async fn logs(&self, req: Request<LogsRequest>) -> Result<Response<Self::LogsStream>, Status> {
        // Like Watch, the call is measured until the stream opens.
        self.timed("Logs", self.logs.open(req.into_inner())).await
    }
}

/// Sends a watch's next event to its client; false when the watch is over (its stream ended,
/// it failed, or the client went away).
async fn forward(
    tx: &tokio::sync::mpsc::Sender<Result<WatchEvent, Status>>,
    ev: Option<crate::error::Result<WatchEvent>>,
) -> bool {
    let Some(ev) = ev else { return false };
    let item = ev.map_err(Status::from);
    let fatal = item.is_err();
    tx.send(item).await.is_ok() && !fatal
}

/// What of each object a list or watch asked for.
fn fields(metadata_only: bool) -> Fields {
    if metadata_only {
        Fields::MetadataOnly
    } else {
        Fields::All
    }
}
