//! The data plane of one node: the listeners it runs and the target groups behind them, kept
//! in step with a [`Config`] by [`DataPlane::apply`].
//!
//! Traffic is served by its own worker threads, one single-threaded tokio runtime each (one per
//! core by default), as nginx's workers: every listening socket is shared by all workers (each
//! accepts on its own handle of it), and a client connection, its requests and the pooled
//! connections to the targets they use stay on the worker that accepted it — no hand-offs
//! between threads on the hot path. Health checks and configuration run on the caller's runtime.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};

use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info};

use crate::config::{Config, ListenerConfig, Protocol};
use crate::group::{Group, HealthEvent, TargetReport};
use crate::http::{self, HttpListener, Routes};
use crate::metrics::{self, ListenerMetrics};
use crate::pool::Pool;
use crate::tcp::{self, TcpProxy};

/// Whether a listener is up, as the agent reports it in the load balancer's status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerState {
    pub load_balancer: String,
    pub port: u16,
    /// Why it is not listening.
    pub error: Option<String>,
}

#[derive(Clone)]
pub struct DataPlane {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for DataPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataPlane").finish_non_exhaustive()
    }
}

struct Inner {
    groups: RwLock<Arc<HashMap<String, Arc<Group>>>>,
    listeners: Mutex<HashMap<(IpAddr, u16), Running>>,
    workers: Vec<Worker>,
    events: mpsc::UnboundedSender<HealthEvent>,
}

/// One traffic thread: its runtime and its own keep-alive pool to the targets.
struct Worker {
    handle: tokio::runtime::Handle,
    pool: Arc<Pool>,
    /// Dropped with the data plane: the thread ends and its connections close.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Worker {
    fn start(index: usize) -> io::Result<Worker> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(format!("hanul-lb-{index}"))
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })?;
        Ok(Worker {
            handle,
            pool: Arc::new(Pool::default()),
            _stop: stop,
        })
    }
}

struct Running {
    config: ListenerConfig,
    kind: Kind,
    metrics: Arc<ListenerMetrics>,
    stop: watch::Sender<bool>,
}

/// A listener's state in each worker.
enum Kind {
    Http(Vec<Arc<HttpListener>>),
    Tcp(Vec<Arc<TcpProxy>>),
}

impl Kind {
    fn set_routes(&self, routes: Routes) {
        let routes = Arc::new(routes);
        let slots: Vec<&RwLock<Arc<Routes>>> = match self {
            Kind::Http(ls) => ls.iter().map(|l| &l.routes).collect(),
            Kind::Tcp(ls) => ls.iter().map(|l| &l.routes).collect(),
        };
        for slot in slots {
            *slot.write().unwrap() = routes.clone();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

impl DataPlane {
    /// A data plane with nothing to run and one worker thread per core, and the receiver of
    /// its targets' health changes.
    pub fn new() -> (DataPlane, mpsc::UnboundedReceiver<HealthEvent>) {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::with_workers(cores).expect("starting the load balancer's worker threads")
    }

    /// A data plane with `workers` traffic threads (at least one).
    pub fn with_workers(
        workers: usize,
    ) -> io::Result<(DataPlane, mpsc::UnboundedReceiver<HealthEvent>)> {
        let (events, rx) = mpsc::unbounded_channel();
        let workers = (0..workers.max(1))
            .map(Worker::start)
            .collect::<io::Result<Vec<_>>>()?;
        let plane = DataPlane {
            inner: Arc::new(Inner {
                groups: RwLock::new(Arc::new(HashMap::new())),
                listeners: Mutex::new(HashMap::new()),
                workers,
                events,
            }),
        };
        Ok((plane, rx))
    }

    /// How many threads serve traffic.
    pub fn workers(&self) -> usize {
        self.inner.workers.len()
    }

    /// Runs `config`: target groups are updated in place (their targets keep their health;
    /// removed ones drain), listeners that stay keep their sockets and open connections and
    /// take the new rules, new ones are bound, removed ones stop accepting. Returns the state
    /// of every listener in `config`; one that could not listen is tried again next time.
    ///
    /// Must be called inside a tokio runtime.
    pub fn apply(&self, config: Config) -> Vec<ListenerState> {
        let inner = &self.inner;
        let groups = {
            let old = inner.groups.read().unwrap().clone();
            let mut next = HashMap::new();
            for gc in config.groups {
                let group = match old.get(&gc.name) {
                    Some(g) => {
                        g.update(gc);
                        g.clone()
                    }
                    None => Group::new(gc, inner.events.clone()),
                };
                next.insert(group.name.clone(), group);
            }
            for (name, g) in old.iter() {
                if !next.contains_key(name) {
                    g.retire();
                }
            }
            let next = Arc::new(next);
            *inner.groups.write().unwrap() = next.clone();
            // Idle connections to targets no group has any more are closed.
            let addresses: std::collections::HashSet<String> =
                next.values().flat_map(|g| g.addresses()).collect();
            for w in &inner.workers {
                w.pool.retain(&|a| addresses.contains(a));
            }
            next
        };

        let mut listeners = inner.listeners.lock().unwrap();
        let mut states = Vec::new();
        let mut wanted = HashMap::new();
        for lc in config.listeners {
            let key = (lc.bind, lc.port);
            if let Some(other) = wanted.get(&key) {
                states.push(ListenerState {
                    load_balancer: lc.load_balancer.clone(),
                    port: lc.port,
                    error: Some(format!(
                        "port {} is used by load balancer {other:?} on this node",
                        lc.port
                    )),
                });
                continue;
            }
            wanted.insert(key, lc.load_balancer.clone());
            let routes = Routes {
                config: lc.clone(),
                groups: groups.clone(),
            };
            let error = match listeners.get_mut(&key) {
                Some(running) if running.config.protocol == lc.protocol => {
                    running.kind.set_routes(routes);
                    running.config = lc.clone();
                    None
                }
                _ => {
                    listeners.remove(&key);
                    match self.start(&lc, routes) {
                        Ok(running) => {
                            info!(load_balancer = %lc.load_balancer, port = lc.port, "Listener up.");
                            listeners.insert(key, running);
                            None
                        }
                        Err(e) => Some(e),
                    }
                }
            };
            states.push(ListenerState {
                load_balancer: lc.load_balancer,
                port: lc.port,
                error,
            });
        }
        listeners.retain(|key, running| {
            let keep = wanted.contains_key(key);
            if !keep {
                info!(load_balancer = %running.config.load_balancer, port = key.1, "Listener stopped.");
            }
            keep
        });
        states
    }

    fn start(&self, lc: &ListenerConfig, routes: Routes) -> Result<Running, String> {
        let cannot = |e: io::Error| {
            if e.kind() == io::ErrorKind::AddrInUse {
                format!("port {} is already in use on this node", lc.port)
            } else {
                format!("cannot listen on {}:{}: {e}", lc.bind, lc.port)
            }
        };
        let socket = bind(SocketAddr::new(lc.bind, lc.port)).map_err(cannot)?;
        let metrics = Arc::new(ListenerMetrics::default());
        let (stop, stopped) = watch::channel(false);
        let mut http_states = Vec::new();
        let mut tcp_states = Vec::new();
        for worker in &self.inner.workers {
            // Each worker accepts on its own handle of the one socket, in its own reactor.
            let listener = {
                let _entered = worker.handle.enter();
                socket
                    .try_clone()
                    .and_then(TcpListener::from_std)
                    .map_err(cannot)?
            };
            let stopped = stopped.clone();
            match lc.protocol {
                Protocol::Http => {
                    let state = Arc::new(HttpListener::new(routes.clone(), worker.pool.clone()));
                    let serve = state.clone();
                    worker
                        .handle
                        .spawn(accept(listener, metrics.clone(), stopped, move |s, p| {
                            http::serve_connection(serve.clone(), s, p)
                        }));
                    http_states.push(state);
                }
                Protocol::Tcp => {
                    let state = Arc::new(TcpProxy {
                        routes: RwLock::new(Arc::new(routes.clone())),
                    });
                    let serve = state.clone();
                    worker
                        .handle
                        .spawn(accept(listener, metrics.clone(), stopped, move |s, p| {
                            tcp::serve_connection(serve.clone(), s, p)
                        }));
                    tcp_states.push(state);
                }
            }
        }
        let kind = match lc.protocol {
            Protocol::Http => Kind::Http(http_states),
            Protocol::Tcp => Kind::Tcp(tcp_states),
        };
        Ok(Running {
            config: lc.clone(),
            kind,
            metrics,
            stop,
        })
    }

    /// The targets of group `name` with their health, or `None` if it is not run here.
    pub fn report(&self, name: &str) -> Option<Vec<TargetReport>> {
        let groups = self.inner.groups.read().unwrap().clone();
        groups.get(name).map(|g| g.report())
    }

    /// Appends the data plane's metrics, Prometheus text format, to `out`.
    pub fn render_metrics(&self, out: &mut String) {
        let groups = self.inner.groups.read().unwrap().clone();
        let mut groups: Vec<(String, Arc<Group>)> =
            groups.iter().map(|(n, g)| (n.clone(), g.clone())).collect();
        groups.sort_by(|a, b| a.0.cmp(&b.0));
        let mut listeners: Vec<(String, u16, Arc<ListenerMetrics>)> = self
            .inner
            .listeners
            .lock()
            .unwrap()
            .values()
            .map(|r| {
                (
                    r.config.load_balancer.clone(),
                    r.config.port,
                    r.metrics.clone(),
                )
            })
            .collect();
        listeners.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        metrics::render(out, &groups, &listeners);
    }
}

/// Accepts connections until `stop` fires, each served by `serve` in its own task and counted
/// in the listener's metrics; open connections carry on to their end.
async fn accept<F, Fut>(
    listener: TcpListener,
    metrics: Arc<ListenerMetrics>,
    mut stop: watch::Receiver<bool>,
    serve: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
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
        let connection = serve(stream, peer);
        let metrics = metrics.clone();
        tokio::spawn(async move {
            metrics.new_connections.fetch_add(1, Ordering::Relaxed);
            metrics.active_connections.fetch_add(1, Ordering::Relaxed);
            connection.await;
            metrics.active_connections.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // A restarted agent takes its ports back at once, past connections in TIME_WAIT. (Not
    // SO_REUSEPORT: a port another process listens on must be refused, not shared.)
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(1024)?;
    let listener = listener.into_std()?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}
