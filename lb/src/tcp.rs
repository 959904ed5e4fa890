//! The network load balancer's listener: a TCP proxy. Each client connection goes to one
//! healthy target (the next one if the first refuses) and bytes are copied both ways until
//! either side closes, or until the target is removed from a group with connection termination
//! and its deregistration delay passes: then both sockets are dropped.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::TcpStream;
use tracing::debug;

use crate::group::Target;
use crate::http::{InFlight, Routes};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) struct TcpProxy {
    pub routes: RwLock<Arc<Routes>>,
}

/// Relays one client connection to its end.
pub(crate) async fn serve_connection(state: Arc<TcpProxy>, client: TcpStream, peer: SocketAddr) {
    if let Err(e) = state.relay(client).await {
        debug!(%peer, error = %e, "tcp connection ended with an error");
    }
}

impl TcpProxy {
    async fn relay(&self, mut client: TcpStream) -> std::io::Result<()> {
        let routes = self.routes.read().unwrap().clone();
        let Some(group) = routes.groups.get(&routes.config.default_group).cloned() else {
            return Ok(());
        };
        let mut tried: Vec<Arc<Target>> = Vec::new();
        let (mut upstream, guard) = loop {
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
        // Subscribed only now, after the connect: the watch keeps its value, so a termination
        // that came first is seen at once.
        let mut terminated = guard.0.terminated();
        tokio::select! {
            relayed = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
                relayed?;
            }
            // An error would mean the target is gone, which `guard` rules out.
            Ok(_) = terminated.wait_for(|t| *t) => {
                debug!(
                    target = %guard.0.address,
                    "Closing a connection: its target was deregistered with connection termination."
                );
            }
        }
        // Both sockets are dropped on return, closing them.
        Ok(())
    }
}
