//! The data plane of one node: the listeners it runs and the target groups behind them, kept
//! in step with a [`Config`] by [`DataPlane::apply`].

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{mpsc, watch};
use tracing::info;

use crate::config::{Config, ListenerConfig, Protocol};
use crate::group::{Group, HealthEvent, TargetReport};
use crate::http::{self, HttpListener, Routes, TargetClient};
use crate::metrics::{self, ListenerMetrics};
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
    client: TargetClient,
    events: mpsc::UnboundedSender<HealthEvent>,
}

struct Running {
    config: ListenerConfig,
    kind: Kind,
    metrics: Arc<ListenerMetrics>,
    stop: watch::Sender<bool>,
}

enum Kind {
    Http(Arc<HttpListener>),
    Tcp(Arc<TcpProxy>),
}

impl Kind {
    fn set_routes(&self, routes: Routes) {
        let slot = match self {
            Kind::Http(l) => &l.routes,
            Kind::Tcp(l) => &l.routes,
        };
        *slot.write().unwrap() = Arc::new(routes);
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

impl DataPlane {
    /// A data plane with nothing to run, and the receiver of its targets' health changes.
    pub fn new() -> (DataPlane, mpsc::UnboundedReceiver<HealthEvent>) {
        let (events, rx) = mpsc::unbounded_channel();
        let plane = DataPlane {
            inner: Arc::new(Inner {
                groups: RwLock::new(Arc::new(HashMap::new())),
                listeners: Mutex::new(HashMap::new()),
                client: http::client(),
                events,
            }),
        };
        (plane, rx)
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
        let listener = bind(SocketAddr::new(lc.bind, lc.port)).map_err(|e| {
            if e.kind() == io::ErrorKind::AddrInUse {
                format!("port {} is already in use on this node", lc.port)
            } else {
                format!("cannot listen on {}:{}: {e}", lc.bind, lc.port)
            }
        })?;
        let metrics = Arc::new(ListenerMetrics::default());
        let (stop, stopped) = watch::channel(false);
        let kind = match lc.protocol {
            Protocol::Http => {
                let state = Arc::new(HttpListener::new(
                    routes,
                    metrics.clone(),
                    self.inner.client.clone(),
                ));
                tokio::spawn(http::serve(listener, state.clone(), stopped));
                Kind::Http(state)
            }
            Protocol::Tcp => {
                let state = Arc::new(TcpProxy {
                    routes: RwLock::new(Arc::new(routes)),
                    metrics: metrics.clone(),
                });
                tokio::spawn(tcp::serve(listener, state.clone(), stopped));
                Kind::Tcp(state)
            }
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

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // A restarted agent takes its ports back at once, past connections in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}
