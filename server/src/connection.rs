//! One client connection: a reader that decodes and executes requests in order, and a
//! writer that sends their responses in the same order — so a client can pipeline requests
//! while a long-poll fetch or a produce waiting for fsync is still pending.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::api::{self, Reply};
use super::broker::Broker;
use super::protocol::frame::read_frame;
use super::protocol::{RequestError, RequestFrame};

/// Responses queued per connection before the reader waits for the writer.
const MAX_IN_FLIGHT: usize = 64;

enum Pending {
    Ready(Bytes),
    Later(BoxFuture<'static, Result<Bytes, RequestError>>),
}

/// Serves one connection until the client closes it, sends something unacceptable, or the
/// server shuts down.
pub(crate) async fn serve(
    broker: Arc<Broker>,
    stream: TcpStream,
    peer: SocketAddr,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let (read_half, write_half) = stream.into_split();
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
            Err(e) => {
                tracing::warn!(%peer, error = %e, "closing connection: bad frame");
                break;
            }
        };
        let request = match RequestFrame::parse(frame) {
            Ok(mut request) => {
                request.peer = Some(peer);
                request
            }
            Err(e) => {
                tracing::warn!(%peer, error = %e, "closing connection: bad request header");
                break;
            }
        };
        tracing::trace!(%peer, api = ?request.api_key, version = request.api_version, client = ?request.client_id, "request");
        let pending = match api::dispatch(&broker, request) {
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

async fn write_responses(
    mut rx: mpsc::Receiver<Pending>,
    write_half: OwnedWriteHalf,
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
