//! One client connection: a reader that decodes and executes requests in order, and a
//! writer that sends their responses in the same order — so a client can pipeline requests
//! while a long-poll fetch or a produce waiting for fsync is still pending.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::api::{self, Reply};
use super::auth::session::{Admission, Session};
use super::auth::tls;
use super::broker::Broker;
use super::listener::ListenerInfo;
use super::protocol::frame::read_frame;
use super::protocol::{RequestError, RequestFrame};

/// Responses queued per connection before the reader waits for the writer.
const MAX_IN_FLIGHT: usize = 64;

/// Time a client has to complete the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

enum Pending {
    Ready(Bytes),
    Later(BoxFuture<'static, Result<Bytes, RequestError>>),
}

/// Serves one connection until the client closes it, sends something unacceptable, or the
/// server shuts down: TLS first on a TLS listener, then requests.
pub(crate) async fn serve(
    broker: Arc<Broker>,
    listener: Arc<ListenerInfo>,
    stream: TcpStream,
    peer: SocketAddr,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let sasl = listener.protocol.sasl();
    let advertised = listener.advertised.clone();
    let Some(acceptor) = &listener.tls else {
        let session = Session::start(sasl, broker.users.clone(), advertised, peer, None).await;
        let (read_half, write_half) = stream.into_split();
        return serve_requests(broker, session, read_half, write_half, peer, shutdown).await;
    };
    let handshake = tokio::select! {
        _ = shutdown.cancelled() => return,
        done = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)) => done,
    };
    let stream = match handshake {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            tracing::warn!(%peer, error = %e, "closing connection: TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::warn!(%peer, "closing connection: TLS handshake timed out");
            return;
        }
    };
    let principal = tls::principal(stream.get_ref().1.peer_certificates());
    let session = Session::start(sasl, broker.users.clone(), advertised, peer, principal).await;
    let (read_half, write_half) = tokio::io::split(stream);
    serve_requests(broker, session, read_half, write_half, peer, shutdown).await
}

async fn serve_requests<R, W>(
    broker: Arc<Broker>,
    mut session: Session,
    read_half: R,
    write_half: W,
    peer: SocketAddr,
    shutdown: CancellationToken,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::channel(MAX_IN_FLIGHT);
    let writer = tokio::spawn(write_responses(rx, write_half, peer, shutdown.clone()));
    let mut reader = BufReader::with_capacity(256 * 1024, read_half);
    let max_request = broker.config.max_request_bytes;
    loop {
        let frame = tokio::select! {
            _ = shutdown.cancelled() => break,
            frame = read_frame(&mut reader, max_request) => frame,
        };
        let frame = match frame {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(e) if e.is_peer_gone() => {
                tracing::debug!(%peer, error = %e, "connection closed by the peer");
                break;
            }
            Err(e) => {
                tracing::warn!(%peer, error = %e, "closing connection: bad frame");
                break;
            }
        };
        let mut request = match RequestFrame::parse(frame) {
            Ok(request) => request,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "closing connection: bad request header");
                break;
            }
        };
        request.peer = Some(peer);
        tracing::trace!(%peer, api = ?request.api_key, version = request.api_version, client = ?request.client_id, "request");
        let reply = match session.admit(request.api_key) {
            Admission::Dispatch(context) => {
                request.context = Some(context);
                api::dispatch(&broker, request)
            }
            Admission::Sasl => {
                let reply = session.sasl(&request).await;
                let close = reply.close;
                let sent = match reply.response {
                    Ok(bytes) => tx.send(Pending::Ready(bytes)).await.is_ok(),
                    Err(e) => {
                        tracing::warn!(%peer, error = %e, "closing connection");
                        false
                    }
                };
                if close || !sent {
                    break;
                }
                continue;
            }
            Admission::Refuse(reason) => {
                tracing::warn!(%peer, api = ?request.api_key, "closing connection: {reason}");
                break;
            }
        };
        let pending = match reply {
            Ok(Reply::Nothing) => continue,
            Ok(Reply::Ready(bytes)) => Pending::Ready(bytes),
            Ok(Reply::Later(future)) => Pending::Later(future),
            Err(e) => {
                tracing::warn!(%peer, error = %e, "closing connection");
                break;
            }
        };
        if tx.send(pending).await.is_err() {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
    tracing::debug!(%peer, "connection closed");
}

async fn write_responses<W: AsyncWrite + Unpin>(
    mut rx: mpsc::Receiver<Pending>,
    write_half: W,
    peer: SocketAddr,
    shutdown: CancellationToken,
) {
    let mut out = BufWriter::with_capacity(256 * 1024, write_half);
    while let Some(pending) = rx.recv().await {
        let bytes = match pending {
            Pending::Ready(bytes) => bytes,
            Pending::Later(future) => {
                let result = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    result = future => result,
                };
                match result {
                    Ok(bytes) => bytes,
                    Err(e) => {
                        tracing::warn!(%peer, error = %e, "closing connection: response failed");
                        break;
                    }
                }
            }
        };
        if out.write_all(&bytes).await.is_err() {
            break;
        }
        if rx.is_empty() && out.flush().await.is_err() {
            break;
        }
    }
    let _ = out.flush().await;
    let _ = out.shutdown().await;
}
