//! The server's listeners: binding each configured address with its security protocol, and
//! accepting connections on it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::tls;
use crate::broker::Broker;
use crate::config::{ListenerConfig, TlsConfig};
use crate::connection::{self, ListenerInfo};
use crate::connection_slots::ConnectionSlots;
use crate::error::ServerError;

/// A bound listener, not yet accepting.
#[derive(Debug)]
pub(crate) struct BoundListener {
    pub(crate) socket: TcpListener,
    pub(crate) local_addr: SocketAddr,
    pub(crate) info: Arc<ListenerInfo>,
}

/// Binds one listener and prepares its TLS acceptor.
pub(crate) async fn bind(
    config: &ListenerConfig,
    tls_config: Option<&TlsConfig>,
) -> Result<BoundListener, ServerError> {
    let tls = match (config.protocol.tls(), tls_config) {
        (false, _) => None,
        (true, Some(tls_config)) => Some(tls::acceptor(tls_config)?),
        (true, None) => {
            return Err(ServerError::Config(format!(
                "listener {}://{} needs a TLS certificate and key",
                config.protocol, config.addr
            )))
        }
    };
    let bind_error = |source| ServerError::Bind {
        addr: config.addr,
        source,
    };
    let socket = TcpListener::bind(config.addr).await.map_err(bind_error)?;
    let local_addr = socket.local_addr().map_err(bind_error)?;
    let advertised = config.advertised.clone().unwrap_or_else(|| {
        let ip = if local_addr.ip().is_unspecified() {
            "127.0.0.1".to_owned()
        } else {
            local_addr.ip().to_string()
        };
        (ip, local_addr.port())
    });
    Ok(BoundListener {
        socket,
        local_addr,
        info: Arc::new(ListenerInfo {
            protocol: config.protocol,
            advertised,
            tls,
        }),
    })
}

/// Accepts connections until shutdown, serving each on its own task; a connection over the
/// limits of `slots` is closed at once.
pub(crate) async fn accept_loop(
    listener: BoundListener,
    broker: Arc<Broker>,
    slots: Arc<ConnectionSlots>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.socket.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let slot = match slots.acquire(peer.ip()) {
                    Ok(slot) => slot,
                    Err(refused) => {
                        if let Some(refusals) = slots.refusals_to_log() {
                            tracing::warn!(%peer, protocol = %listener.info.protocol, refusals, "closing new connection at once: {refused}");
                        }
                        drop(stream);
                        continue;
                    }
                };
                tracing::debug!(%peer, protocol = %listener.info.protocol, "connection accepted");
                tasks.spawn(connection::serve(
                    broker.clone(),
                    listener.info.clone(),
                    stream,
                    peer,
                    slot,
                    shutdown.clone(),
                ));
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
