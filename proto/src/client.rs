//! The gRPC client every other part of hanul uses: the CLI, controllers and agents.
//!
//! It adds the bearer token to every call and wraps the generated client in typed helpers.
//! [`Client::watch_from`] follows the Kubernetes informer contract: resume from the last
//! revision seen; when the server says the revision is compacted (`OUT_OF_RANGE`), re-list and
//! start again from the list's revision.

use crate::{
    Kind,
    v1::{
        ApplyRequest, ApplyResult, CreateRequest, DeleteRequest, DeleteResponse, EventType,
        GetRequest, ListRequest, LogChunk, LogsRequest, Object, UpdateRequest, WatchEvent,
        WatchRequest, object_service_client::ObjectServiceClient,
    },
};
use futures::{Stream, StreamExt};
use std::time::Duration;
use tonic::{
    Code, Request, Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Channel, Endpoint},
};

/// Adds `authorization: Bearer <token>` to every request.
#[derive(Clone)]
pub struct BearerAuth {
    header: Option<MetadataValue<Ascii>>,
}

impl Interceptor for BearerAuth {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(h) = &self.header {
            req.metadata_mut().insert("authorization", h.clone());
        }
        Ok(req)
    }
}

/// A connection to the hanul API server. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct Client {
    inner: ObjectServiceClient<InterceptedService<Channel, BearerAuth>>,
    channel: Channel,
    auth: BearerAuth,
}

/// Why a client could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid server address {url:?}")]
    Address {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("cannot reach the hanul server at {url}")]
    Connect {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("the token contains characters that cannot be sent in a header")]
    Token,
}

impl Client {
    /// Connects to `url` (`http://127.0.0.1:7443`); `token` may be empty (calls then fail with
    /// `UNAUTHENTICATED`).
    pub async fn connect(url: &str, token: &str) -> Result<Client, ConnectError> {
        let endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|source| ConnectError::Address {
                url: url.into(),
                source,
            })?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_while_idle(true);
        let channel = endpoint
            .connect()
            .await
            .map_err(|source| ConnectError::Connect {
                url: url.into(),
                source,
            })?;
        Self::from_channel(channel, token)
    }

    /// Connects lazily: the first call opens the connection and a lost connection is redialed.
    pub fn connect_lazy(url: &str, token: &str) -> Result<Client, ConnectError> {
        let channel = Endpoint::from_shared(url.to_string())
            .map_err(|source| ConnectError::Address {
                url: url.into(),
                source,
            })?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .connect_lazy();
        Self::from_channel(channel, token)
    }

    fn from_channel(channel: Channel, token: &str) -> Result<Client, ConnectError> {
        let header = if token.is_empty() {
            None
        } else {
            Some(
                format!("Bearer {token}")
                    .parse()
                    .map_err(|_| ConnectError::Token)?,
            )
        };
        let auth = BearerAuth { header };
        let inner = ObjectServiceClient::with_interceptor(channel.clone(), auth.clone())
            .max_decoding_message_size(64 << 20);
        Ok(Client {
            inner,
            channel,
            auth,
        })
    }

    /// The underlying channel and auth, for other services on the same server.
    pub fn channel(&self) -> (Channel, BearerAuth) {
        (self.channel.clone(), self.auth.clone())
    }

    pub async fn apply(
        &self,
        object: Object,
        dry_run: bool,
    ) -> Result<(Object, ApplyResult), Status> {
        self.apply_with(object, dry_run, Vec::new()).await
    }

    /// [`Client::apply`]; a dry run counts `also_instance_types` as existing (the instance
    /// types a manifest defines beside its instances).
    pub async fn apply_with(
        &self,
        object: Object,
        dry_run: bool,
        also_instance_types: Vec<String>,
    ) -> Result<(Object, ApplyResult), Status> {
        let resp = self
            .inner
            .clone()
            .apply(ApplyRequest {
                object: Some(object),
                dry_run,
                also_instance_types,
            })
            .await?
            .into_inner();
        let result = resp.result();
        Ok((resp.object.unwrap_or_default(), result))
    }

    pub async fn create(&self, object: Object) -> Result<Object, Status> {
        Ok(self
            .inner
            .clone()
            .create(CreateRequest {
                object: Some(object),
                dry_run: false,
            })
            .await?
            .into_inner())
    }

    pub async fn get(&self, kind: Kind, name: &str) -> Result<Object, Status> {
        let req = GetRequest {
            kind: kind.as_str().into(),
            name: name.into(),
        };
        Ok(self.inner.clone().get(req).await?.into_inner())
    }

    /// Lists objects of `kind` (every kind when `None`) matching a label selector; returns them
    /// with the revision to watch from.
    pub async fn list(
        &self,
        kind: Option<Kind>,
        selector: &str,
    ) -> Result<(Vec<Object>, u64), Status> {
        self.list_fields(kind, selector, Fields::All).await
    }

    /// Like [`Client::list`], with only `fields` of each object.
    pub async fn list_fields(
        &self,
        kind: Option<Kind>,
        selector: &str,
        fields: Fields,
    ) -> Result<(Vec<Object>, u64), Status> {
        let req = ListRequest {
            kind: kind.map(|k| k.as_str().to_string()).unwrap_or_default(),
            label_selector: selector.into(),
            metadata_only: fields == Fields::MetadataOnly,
        };
        let resp = self.inner.clone().list(req).await?.into_inner();
        Ok((resp.items, resp.revision))
    }

    /// Replaces spec and user metadata; a non-zero `resourceVersion` in the object is checked.
    pub async fn update(&self, object: Object) -> Result<Object, Status> {
        Ok(self
            .inner
            .clone()
            .update(UpdateRequest {
                object: Some(object),
                dry_run: false,
            })
            .await?
            .into_inner())
    }

    /// Replaces status; a non-zero `resourceVersion` in the object is checked.
    pub async fn update_status(&self, object: Object) -> Result<Object, Status> {
        Ok(self
            .inner
            .clone()
            .update_status(UpdateRequest {
                object: Some(object),
                dry_run: false,
            })
            .await?
            .into_inner())
    }

    pub async fn delete(&self, kind: Kind, name: &str) -> Result<DeleteResponse, Status> {
        self.delete_at(kind, name, 0, false).await
    }

    /// Deletes with a `resourceVersion` precondition (0: none), optionally as a dry run.
    pub async fn delete_at(
        &self,
        kind: Kind,
        name: &str,
        resource_version: u64,
        dry_run: bool,
    ) -> Result<DeleteResponse, Status> {
        let req = DeleteRequest {
            kind: kind.as_str().into(),
            name: name.into(),
            resource_version,
            dry_run,
        };
        Ok(self.inner.clone().delete(req).await?.into_inner())
    }

    /// A raw watch: events after `since` (0: from now). Ends with `OUT_OF_RANGE` when `since` is
    /// compacted.
    pub async fn watch(
        &self,
        kind: Option<Kind>,
        selector: &str,
        since: u64,
    ) -> Result<tonic::Streaming<WatchEvent>, Status> {
        self.watch_fields(kind, selector, since, Fields::All).await
    }

    /// Like [`Client::watch`], with only `fields` of each event's object.
    pub async fn watch_fields(
        &self,
        kind: Option<Kind>,
        selector: &str,
        since: u64,
        fields: Fields,
    ) -> Result<tonic::Streaming<WatchEvent>, Status> {
        let req = WatchRequest {
            kind: kind.map(|k| k.as_str().to_string()).unwrap_or_default(),
            label_selector: selector.into(),
            since_revision: since,
            bookmarks: true,
            metadata_only: fields == Fields::MetadataOnly,
        };
        Ok(self.inner.clone().watch(req).await?.into_inner())
    }

    /// Streams an instance's console log through the server from its node's agent: the last
    /// `tail_lines` lines (`None`: all of it), then, with `follow`, what is appended until the
    /// stream is dropped or the instance is gone.
    pub async fn logs(
        &self,
        name: &str,
        follow: bool,
        tail_lines: Option<i64>,
    ) -> Result<tonic::Streaming<LogChunk>, Status> {
        let req = LogsRequest {
            name: name.into(),
            follow,
            tail_lines,
            kind: Kind::Instance.as_str().into(),
        };
        Ok(self.inner.clone().logs(req).await?.into_inner())
    }

    /// Lists, then watches from the list's revision, forever: resumes after a broken stream from
    /// the last revision seen and re-lists when that revision is compacted. The first item is
    /// always a [`WatchUpdate::Listed`]; later `Listed` items replace the whole picture.
    pub fn list_watch(
        &self,
        kind: Option<Kind>,
        selector: &str,
    ) -> impl Stream<Item = WatchUpdate> + Send + 'static {
        self.list_watch_fields(kind, selector, Fields::All)
    }

    /// Like [`Client::list_watch`], with only `fields` of each object.
    pub fn list_watch_fields(
        &self,
        kind: Option<Kind>,
        selector: &str,
        fields: Fields,
    ) -> impl Stream<Item = WatchUpdate> + Send + 'static {
        let client = self.clone();
        let selector = selector.to_string();
        async_stream(move |tx| async move {
            let mut revision: Option<u64> = None;
            let mut backoff = Duration::from_millis(100);
            loop {
                let since = match revision {
                    Some(r) => r,
                    None => match client.list_fields(kind, &selector, fields).await {
                        Ok((items, rev)) => {
                            if tx
                                .send(WatchUpdate::Listed {
                                    items,
                                    revision: rev,
                                })
                                .await
                                .is_err()
                            {
                                return;
                            }
                            revision = Some(rev);
                            rev
                        }
                        Err(status) => {
                            if tx.send(WatchUpdate::Error(status)).await.is_err() {
                                return;
                            }
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(Duration::from_secs(5));
                            continue;
                        }
                    },
                };
                match client.watch_fields(kind, &selector, since, fields).await {
                    Ok(mut stream) => {
                        backoff = Duration::from_millis(100);
                        loop {
                            let next = tokio::select! {
                                next = stream.next() => next,
                                // The consumer went away: stop watching.
                                _ = tx.closed() => return,
                            };
                            match next {
                                Some(Ok(ev)) => {
                                    revision = Some(ev.revision.max(since));
                                    if ev.r#type() == EventType::Bookmark {
                                        continue;
                                    }
                                    if tx.send(WatchUpdate::Event(ev)).await.is_err() {
                                        return;
                                    }
                                }
                                Some(Err(status)) => {
                                    if status.code() == Code::OutOfRange {
                                        revision = None;
                                    }
                                    break;
                                }
                                None => break,
                            }
                        }
                    }
                    Err(status) => {
                        if status.code() == Code::OutOfRange {
                            revision = None;
                        } else if tx.send(WatchUpdate::Error(status)).await.is_err() {
                            return;
                        }
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        })
    }
}

/// What of each object a list or watch returns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fields {
    /// The whole object.
    #[default]
    All,
    /// Its kind and metadata only, spec and status left out (Kubernetes'
    /// PartialObjectMetadata): what a collector that judges objects by owner references and
    /// deletion needs, at a fraction of the bytes.
    MetadataOnly,
}

/// What [`Client::list_watch`] yields.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // Moved once per event; boxing would add an allocation each.
pub enum WatchUpdate {
    /// A full list: the complete set of matching objects at `revision`.
    Listed { items: Vec<Object>, revision: u64 },
    /// One change after the last list.
    Event(WatchEvent),
    /// A call failed; the stream retries on its own.
    Error(Status),
}

/// A stream fed by a task through a small channel; the task ends when the stream is dropped.
fn async_stream<T, F, Fut>(f: F) -> impl Stream<Item = T> + Send + 'static
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<T>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    tokio::spawn(f(tx));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
