//! The network load balancer's listener: a TCP proxy. Each client connection goes to one
//! healthy target (the next one if the first refuses) and bytes are copied both ways until
//! either side closes.

use std::sync::Arc;
use std::sync::RwLock;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::debug;

use crate::group::Target;
use crate::http::{InFlight, Routes};
use crate::metrics::ListenerMetrics;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) struct TcpProxy {
    pub routes: RwLock<Arc<Routes>>,
    pub metrics: Arc<ListenerMetrics>,
}

pub(crate) async fn serve(
    listener: TcpListener,
    state: Arc<TcpProxy>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (client, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let _ = client.set_nodelay(true);
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
            if let Err(e) = state.relay(client).await {
                debug!(%peer, error = %e, "tcp connection ended with an error");
            }
            state
                .metrics
                .active_connections
                .fetch_sub(1, Ordering::Relaxed);
        });
    }
}

impl TcpProxy {
    async fn relay(&self, mut client: TcpStream) -> std::io::Result<()> {
        let routes = self.routes.read().unwrap().clone();
        let Some(group) = routes.groups.get(&routes.config.default_group).cloned() else {
            return Ok(());
        };
        let mut tried: Vec<Arc<Target>> = Vec::new();
        let (mut upstream, _guard) = loop {
            let Some(target) = group.pick(group.request_settings().1, None, &tried) else {
                group.metrics.elb_error(503);
                return Ok(());
            };
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&target.address)).await {
                Ok(Ok(stream)) => break (stream, InFlight::new(target)),
                Ok(Err(e)) => debug!(target = %target.address, error = %e, "target refused"),
                Err(_) => debug!(target = %target.address, "target connect timed out"),
            }
            tried.push(target);
        };
        group.metrics.connection();
        let _ = upstream.set_nodelay(true);
        tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
        Ok(())
    }
}
