//! The `Logs` RPC: an instance's console log, proxied from the agent of the node it runs on.
//!
//! The log never passes through the store: the server finds the instance's node, then streams
//! `GET http://{node.spec.agentEndpoint}/v1/logs/{name}` (the agent's endpoint, see
//! `hanul_agent::endpoint`) back to the caller chunk by chunk. The server authenticates to the
//! agent with the cluster's join token, the one secret every agent holds. This HTTP call is the
//! only thing the server knows of agents: they register themselves as `Node`s like any client.
//!
//! A follow stream ends when the caller goes away (the channel to tonic closes and the HTTP
//! connection to the agent is dropped with it), or when the agent ends it (the instance is gone,
//! or the agent stops).

use crate::{error::Error, registry::Registry};
use bytes::Bytes;
use hanul_proto::{
    Kind,
    v1::{LogChunk, LogsRequest, object::Resource},
};
use http_body_util::{BodyExt, Empty};
use std::{pin::Pin, sync::Arc, time::Duration};
use tokio::net::TcpStream;
use tokio_stream::Stream;
use tonic::Status;
use tracing::debug;

/// How long connecting to an agent may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an agent may take to answer with headers.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of an agent's error body is quoted in the error.
const MAX_ERROR_BODY: usize = 1024;

/// A stream of log chunks as the `Logs` RPC returns it.
pub type LogStream = Pin<Box<dyn Stream<Item = Result<LogChunk, Status>> + Send>>;

/// Opens instance logs through their nodes' agents.
#[derive(Clone)]
pub struct AgentLogs {
    registry: Registry,
    /// The bearer token agents accept: the join token.
    token: Arc<str>,
}

impl AgentLogs {
    pub fn new(registry: Registry, token: &str) -> AgentLogs {
        AgentLogs {
            registry,
            token: token.into(),
        }
    }

    /// Finds the instance's agent and starts streaming its log. Fails before the first chunk
    /// when the instance, its node or the agent cannot serve it.
    pub async fn open(&self, req: LogsRequest) -> Result<LogStream, Error> {
        check_kind(&req.kind)?;
        if req.name.is_empty() {
            return Err(Error::invalid("name", "required: the instance's name"));
        }
        let instance = match self.registry.get(Kind::Instance, &req.name).await?.resource {
            Some(Resource::Instance(i)) => i,
            _ => return Err(not_found(Kind::Instance, &req.name)),
        };
        let node_name = instance
            .status
            .map(|s| s.node)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| Error::NotPlaced {
                instance: req.name.clone(),
            })?;
        let node = match self.registry.get(Kind::Node, &node_name).await {
            Ok(o) => match o.resource {
                Some(Resource::Node(n)) => n,
                _ => return Err(not_found(Kind::Node, &node_name)),
            },
            Err(Error::NotFound { .. }) => {
                return Err(Error::NodeMissing {
                    instance: req.name.clone(),
                    node: node_name,
                });
            }
            Err(e) => return Err(e),
        };
        let endpoint = node
            .spec
            .map(|s| s.agent_endpoint)
            .filter(|e| !e.is_empty())
            .ok_or_else(|| Error::NoAgentEndpoint {
                node: node_name.clone(),
            })?;
        let mut query = format!("follow={}", req.follow);
        if let Some(n) = req.tail_lines {
            query.push_str(&format!("&tail={n}"));
        }
        let path = format!("/v1/logs/{}?{query}", req.name);
        let agent = Agent {
            node: node_name,
            endpoint,
        };
        let body = agent.get(&path, &self.token).await?;
        Ok(agent.stream(body))
    }
}

fn not_found(kind: Kind, name: &str) -> Error {
    Error::NotFound {
        kind: kind.as_str().into(),
        name: name.into(),
    }
}

fn check_kind(kind: &str) -> Result<(), Error> {
    if kind.is_empty() || Kind::lookup(kind) == Some(Kind::Instance) {
        Ok(())
    } else {
        Err(Error::invalid(
            "kind",
            format!("{kind:?} has no logs; only instances have (kind \"Instance\")"),
        ))
    }
}

/// The agent of one node.
struct Agent {
    node: String,
    endpoint: String,
}

impl Agent {
    fn unreachable(&self, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
        Error::AgentUnreachable {
            node: self.node.clone(),
            endpoint: self.endpoint.clone(),
            source: source.into(),
        }
    }

    /// Sends `GET path` and returns the body of a 200 answer; anything else is an error.
    async fn get(&self, path: &str, token: &str) -> Result<hyper::body::Incoming, Error> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.endpoint))
            .await
            .map_err(|_| self.unreachable("connecting timed out"))?
            .map_err(|e| self.unreachable(e))?;
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| self.unreachable(e))?;
        // Ends when the response body is done or dropped (the caller went away).
        tokio::spawn(async move {
            if let Err(error) = conn.await {
                debug!(%error, "Connection to an agent ended with an error.");
            }
        });
        let req = http::Request::get(path)
            .header(http::header::HOST, &self.endpoint)
            .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Empty::<Bytes>::new())
            .map_err(|e| Error::invalid("name", format!("cannot be put in a URL: {e}")))?;
        let resp = tokio::time::timeout(RESPONSE_TIMEOUT, sender.send_request(req))
            .await
            .map_err(|_| self.unreachable("no answer in time"))?
            .map_err(|e| self.unreachable(e))?;
        let status = resp.status();
        if status == http::StatusCode::OK {
            return Ok(resp.into_body());
        }
        let body = tokio::time::timeout(RESPONSE_TIMEOUT, resp.into_body().collect())
            .await
            .ok()
            .and_then(Result::ok)
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let body = &body[..body.len().min(MAX_ERROR_BODY)];
        Err(Error::AgentRefused {
            node: self.node.clone(),
            status: status.as_u16(),
            message: String::from_utf8_lossy(body).trim().to_owned(),
        })
    }

    /// Forwards the body's data frames as chunks until it ends or the caller goes away.
    fn stream(self, mut body: hyper::body::Incoming) -> LogStream {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            loop {
                let frame = tokio::select! {
                    frame = body.frame() => frame,
                    _ = tx.closed() => break,
                };
                let item = match frame {
                    None => break,
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) => Ok(LogChunk { data: data.into() }),
                        Err(_trailers) => continue,
                    },
                    Some(Err(e)) => Err(Status::from(self.unreachable(e))),
                };
                let fatal = item.is_err();
                if tx.send(item).await.is_err() || fatal {
                    break;
                }
            }
        });
        Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Config, StoreBackend};
    use futures::StreamExt;
    use hanul_proto::{
        Client,
        v1::{Instance, InstanceSpec, InstanceStatus, Node, NodeSpec, Object, ObjectMeta},
    };
    use hyper::{Request, Response, body::Incoming};
    use std::{
        convert::Infallible,
        net::SocketAddr,
        sync::{
            Mutex,
            atomic::{AtomicUsize, Ordering},
        },
    };
    use tokio::sync::mpsc;
    use tonic::Code;

    /// What the fake agent saw.
    #[derive(Default)]
    struct Seen {
        requests: Mutex<Vec<(String, Option<String>)>>,
        /// Follow streams whose client went away.
        closed: AtomicUsize,
    }

    /// A fake agent: answers `/v1/logs/web-1` with a fixed log, and with `follow=true` keeps
    /// the stream open, sending what the test pushes into `more`. Any other instance is 404.
    async fn fake_agent(more: mpsc::UnboundedReceiver<&'static str>) -> (SocketAddr, Arc<Seen>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Seen::default());
        let more = Arc::new(tokio::sync::Mutex::new(more));
        let shared = seen.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let seen = shared.clone();
                let more = more.clone();
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let seen = seen.clone();
                    let more = more.clone();
                    async move {
                        let auth = req
                            .headers()
                            .get("authorization")
                            .map(|h| h.to_str().unwrap().to_owned());
                        let uri = req.uri().to_string();
                        seen.requests.lock().unwrap().push((uri.clone(), auth));
                        let (tx, rx) =
                            mpsc::channel::<Result<hyper::body::Frame<Bytes>, Infallible>>(4);
                        let status = if uri.starts_with("/v1/logs/web-1?") {
                            tx.send(Ok(hyper::body::Frame::data(Bytes::from_static(
                                b"one\ntwo\n",
                            ))))
                            .await
                            .unwrap();
                            if uri.contains("follow=true") {
                                tokio::spawn(async move {
                                    let mut more = more.lock().await;
                                    loop {
                                        tokio::select! {
                                            line = more.recv() => {
                                                let Some(line) = line else { break };
                                                let frame = hyper::body::Frame::data(Bytes::from_static(line.as_bytes()));
                                                if tx.send(Ok(frame)).await.is_err() {
                                                    break;
                                                }
                                            }
                                            _ = tx.closed() => break,
                                        }
                                    }
                                    seen.closed.fetch_add(1, Ordering::SeqCst);
                                });
                            }
                            200
                        } else {
                            tx.send(Ok(hyper::body::Frame::data(Bytes::from_static(
                                b"instance \"db-1\" has no logs on this node\n",
                            ))))
                            .await
                            .unwrap();
                            404
                        };
                        let body = http_body_util::StreamBody::new(
                            tokio_stream::wrappers::ReceiverStream::new(rx),
                        );
                        let mut resp = Response::new(body);
                        *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                        Ok::<_, Infallible>(resp)
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc),
                );
            }
        });
        (addr, seen)
    }

    async fn server() -> (crate::Server, Client, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let server = crate::start(Config {
            data_dir: dir.path().to_owned(),
            listen: "127.0.0.1:0".parse().unwrap(),
            metrics_listen: None,
            store: StoreBackend::Memory,
        })
        .await
        .unwrap();
        let client = Client::connect(&server.url(), server.tokens.admin())
            .await
            .unwrap();
        (server, client, dir)
    }

    fn meta(name: &str) -> Option<ObjectMeta> {
        Some(ObjectMeta {
            name: name.into(),
            ..Default::default()
        })
    }

    async fn node(client: &Client, name: &str, agent_endpoint: &str) {
        client
            .create(Object::from(Node {
                metadata: meta(name),
                spec: Some(NodeSpec {
                    zone: "az-a".into(),
                    agent_endpoint: agent_endpoint.into(),
                    ..Default::default()
                }),
                status: None,
            }))
            .await
            .unwrap();
    }

    /// Creates an instance, placed on `node` when it is not empty.
    async fn instance(client: &Client, name: &str, node: &str) {
        let created = client
            .create(Object::from(Instance {
                metadata: meta(name),
                spec: Some(InstanceSpec {
                    image: "busybox".into(),
                    ..Default::default()
                }),
                status: None,
            }))
            .await
            .unwrap();
        if node.is_empty() {
            return;
        }
        let Some(Resource::Instance(mut i)) = created.resource else {
            panic!("created {created:?}")
        };
        i.status = Some(InstanceStatus {
            node: node.into(),
            ..Default::default()
        });
        client.update_status(Object::from(i)).await.unwrap();
    }

    async fn next_text(stream: &mut tonic::Streaming<LogChunk>) -> String {
        let chunk = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("a chunk within 10 s")
            .expect("the stream goes on")
            .unwrap();
        String::from_utf8(chunk.data).unwrap()
    }

    #[tokio::test]
    async fn logs_stream_the_agents_bytes_with_the_join_token() {
        let (_more, more_rx) = mpsc::unbounded_channel();
        let (agent, seen) = fake_agent(more_rx).await;
        let (server, client, _dir) = server().await;
        node(&client, "node-a", &agent.to_string()).await;
        instance(&client, "web-1", "node-a").await;

        let mut stream = client.logs("web-1", false, Some(5)).await.unwrap();
        let mut text = String::new();
        while let Some(chunk) = stream.next().await {
            text.push_str(std::str::from_utf8(&chunk.unwrap().data).unwrap());
        }
        assert_eq!(text, "one\ntwo\n");
        let requests = seen.requests.lock().unwrap().clone();
        let want_auth = format!("Bearer {}", server.tokens.join());
        assert_eq!(
            requests,
            vec![(
                "/v1/logs/web-1?follow=false&tail=5".to_owned(),
                Some(want_auth)
            )]
        );
    }

    #[tokio::test]
    async fn follow_streams_what_the_agent_sends_until_the_caller_goes() {
        let (more, more_rx) = mpsc::unbounded_channel();
        let (agent, seen) = fake_agent(more_rx).await;
        let (_server, client, _dir) = server().await;
        node(&client, "node-a", &agent.to_string()).await;
        instance(&client, "web-1", "node-a").await;

        let mut stream = client.logs("web-1", true, None).await.unwrap();
        assert_eq!(next_text(&mut stream).await, "one\ntwo\n");
        more.send("three\n").unwrap();
        assert_eq!(next_text(&mut stream).await, "three\n");
        assert_eq!(
            seen.requests.lock().unwrap()[0].0,
            "/v1/logs/web-1?follow=true"
        );

        drop(stream);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while seen.closed.load(Ordering::SeqCst) == 0 {
            // The fake only notices once it writes to a closed connection.
            let _ = more.send("ping\n");
            assert!(
                tokio::time::Instant::now() < deadline,
                "the agent's stream was not closed after the caller went away"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn errors_say_why_there_are_no_logs() {
        let (_more, more_rx) = mpsc::unbounded_channel();
        let (agent, _seen) = fake_agent(more_rx).await;
        let (_server, client, _dir) = server().await;
        node(&client, "node-a", &agent.to_string()).await;
        node(&client, "node-b", "").await;
        instance(&client, "db-1", "node-a").await;
        instance(&client, "pending-1", "").await;
        instance(&client, "lost-1", "node-b").await;
        instance(&client, "orphan-1", "node-z").await;

        let cases = [
            ("nope", Code::NotFound, "Instance \"nope\" not found"),
            ("db-1", Code::NotFound, "has no logs on this node"),
            (
                "pending-1",
                Code::FailedPrecondition,
                "instance \"pending-1\" is not placed on a node yet",
            ),
            (
                "lost-1",
                Code::Unavailable,
                "node \"node-b\" has no agent endpoint",
            ),
            ("orphan-1", Code::FailedPrecondition, "node \"node-z\""),
        ];
        for (name, code, message) in cases {
            let status = client.logs(name, false, None).await.unwrap_err();
            assert_eq!(status.code(), code, "{name}: {status:?}");
            assert!(
                status.message().contains(message),
                "{name}: {:?} should contain {message:?}",
                status.message()
            );
        }
    }

    #[tokio::test]
    async fn an_unreachable_agent_is_unavailable() {
        // A port that was free a moment ago: nothing listens there.
        let addr = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let (_server, client, _dir) = server().await;
        node(&client, "node-a", &addr.to_string()).await;
        instance(&client, "web-1", "node-a").await;
        let status = client.logs("web-1", false, None).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(status.message().contains("node-a"), "{status:?}");
    }

    #[test]
    fn only_instances_have_logs() {
        assert!(check_kind("").is_ok());
        assert!(check_kind("Instance").is_ok());
        assert!(check_kind("instances").is_ok());
        let err = check_kind("Node").unwrap_err().to_string();
        assert!(err.starts_with("kind:"), "{err}");
    }
}
