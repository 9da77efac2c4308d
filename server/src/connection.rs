//! One client connection: a reader that decodes and executes requests in order, and a
//! writer that sends their responses in the same order — so a client can pipeline requests
//! while a long-poll fetch or a produce waiting for fsync is still pending.
//!
//! Until a SASL listener's connection has authenticated, it is held to small frames, a
//! small read buffer and an authentication deadline; every connection is closed once it has
//! been idle (no request, no response owed) for the configured time.

use std::io::Cursor;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter, Chain};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::api::{self, Reply};
use super::auth::session::{Admission, SaslReply, Session};
use super::auth::tls;
use super::broker::Broker;
use super::config::SecurityProtocol;
use super::connection_slots::Slot;
use super::protocol::frame::{read_frame, FrameError, FrameLimits};
use super::protocol::{RequestError, RequestFrame};

/// Responses queued per connection before the reader waits for the writer.
const MAX_IN_FLIGHT: usize = 64;

/// Time a client has to complete the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Read buffer of an authenticated connection: room for many pipelined small requests.
const READ_BUFFER: usize = 256 * 1024;

/// Read buffer before authentication, when requests are small (ApiVersions, SaslHandshake,
/// SaslAuthenticate): an unauthenticated client makes the server fill no more than this.
const PRE_AUTH_READ_BUFFER: usize = 4 * 1024;

/// The buffered reader of a connection. The cursor holds bytes carried over when the buffer
/// is widened after authentication; the reader type stays the same either way.
type FrameReader<R> = BufReader<Chain<Cursor<Bytes>, R>>;

/// When a connection last received a request or sent a response, and how many responses it
/// still owes: it is idle only while it owes none.
#[derive(Debug)]
struct Activity {
    start: Instant,
    /// Milliseconds from `start` to the last request read or response written.
    last_ms: AtomicU64,
    /// Responses queued or being awaited, not yet written.
    owed: AtomicUsize,
}

impl Activity {
    fn new() -> Self {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            owed: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(now, Ordering::Relaxed);
    }

    fn owe(&self) {
        self.owed.fetch_add(1, Ordering::Relaxed);
        self.touch();
    }

    fn paid(&self) {
        self.owed.fetch_sub(1, Ordering::Relaxed);
        self.touch();
    }

    /// When the connection becomes idle for `max_idle` if nothing happens meanwhile; while
    /// a response is owed, no sooner than `max_idle` from now.
    fn idle_deadline(&self, max_idle: Duration) -> Instant {
        if self.owed.load(Ordering::Relaxed) > 0 {
            return Instant::now() + max_idle;
        }
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + max_idle
    }
}

/// The reader of a new connection: a small buffer until it is authenticated.
fn frame_reader<R: AsyncRead + Unpin>(read_half: R, authenticated: bool) -> FrameReader<R> {
    let capacity = if authenticated {
        READ_BUFFER
    } else {
        PRE_AUTH_READ_BUFFER
    };
    BufReader::with_capacity(capacity, Cursor::new(Bytes::new()).chain(read_half))
}

/// The same reader with the full buffer, keeping the bytes already buffered, in order.
fn widen<R: AsyncRead + Unpin>(reader: FrameReader<R>) -> FrameReader<R> {
    let mut carried = BytesMut::from(reader.buffer());
    let (cursor, read_half) = reader.into_inner().into_inner();
    let consumed = usize::try_from(cursor.position()).unwrap_or(usize::MAX);
    let unread = cursor
        .get_ref()
        .slice(consumed.min(cursor.get_ref().len())..);
    carried.extend_from_slice(&unread);
    BufReader::with_capacity(READ_BUFFER, Cursor::new(carried.freeze()).chain(read_half))
}

/// Why the reader stopped waiting for the next frame.
enum Wait {
    /// A frame (or why none could be read).
    Frame(Result<Option<Bytes>, FrameError>),
    /// Close the connection: shutdown, the authentication deadline or the idle timeout.
    Close,
}

enum Pending {
    Ready(Bytes),
    Later(BoxFuture<'static, Result<Bytes, RequestError>>),
}

/// What a connection needs to know of the listener it came through.
pub(crate) struct ListenerInfo {
    /// Its security protocol.
    pub(crate) protocol: SecurityProtocol,
    /// Host and port given to its clients in Metadata and FindCoordinator.
    pub(crate) advertised: (String, u16),
    /// The TLS acceptor of `SSL` and `SASL_SSL` listeners.
    pub(crate) tls: Option<TlsAcceptor>,
}

impl std::fmt::Debug for ListenerInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerInfo")
            .field("protocol", &self.protocol)
            .field("advertised", &self.advertised)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// Serves one connection until the client closes it, sends something unacceptable, or the
/// server shuts down: TLS first on a TLS listener, then requests.
pub(crate) async fn serve(
    broker: Arc<Broker>,
    listener: Arc<ListenerInfo>,
    stream: TcpStream,
    peer: SocketAddr,
    slot: Slot,
    shutdown: CancellationToken,
) {
    // Counted from the accept: the TLS handshake is part of the time to authenticate.
    let accepted = Instant::now();
    let _slot = slot;
    let _ = stream.set_nodelay(true);
    let sasl = listener.protocol.sasl();
    let advertised = listener.advertised.clone();
    let Some(acceptor) = &listener.tls else {
        let session = Session::start(sasl, broker.users.clone(), advertised, peer, None).await;
        let (read_half, write_half) = stream.into_split();
        let connection = Connection {
            broker,
            peer,
            accepted,
            shutdown,
        };
        return connection
            .serve_requests(session, read_half, write_half)
            .await;
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
    let connection = Connection {
        broker,
        peer,
        accepted,
        shutdown,
    };
    connection
        .serve_requests(session, read_half, write_half)
        .await
}

/// What serving one connection's requests needs.
struct Connection {
    broker: Arc<Broker>,
    peer: SocketAddr,
    /// When the connection was accepted: the authentication deadline counts from here.
    accepted: Instant,
    shutdown: CancellationToken,
}

impl Connection {
    async fn serve_requests<R, W>(self, mut session: Session, read_half: R, write_half: W)
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let peer = self.peer;
        let activity = Arc::new(Activity::new());
        let (tx, rx) = mpsc::channel(MAX_IN_FLIGHT);
        let writer = tokio::spawn(write_responses(
            rx,
            write_half,
            peer,
            activity.clone(),
            self.shutdown.clone(),
        ));
        let mut widened = session.is_authenticated();
        let mut reader = frame_reader(read_half, widened);
        loop {
            if !widened && session.is_authenticated() {
                reader = widen(reader);
                widened = true;
            }
            let frame = match self.next_frame(&mut reader, &session, &activity).await {
                Wait::Frame(frame) => frame,
                Wait::Close => break,
            };
            activity.touch();
            let frame = match frame {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) if e.is_peer_gone() => {
                    tracing::debug!(%peer, error = %e, "connection closed by the peer");
                    break;
                }
                Err(e) => {
                    tracing::warn!(%peer, authenticated = session.is_authenticated(), error = %e, "closing connection: bad frame");
                    break;
                }
            };
            if session.awaits_raw_token() {
                // After a SaslHandshake v0 the frame is a SASL token, not a request.
                let reply = session.raw_token(frame).await;
                if !self.send_sasl_reply(reply, &tx, &activity).await {
                    break;
                }
                continue;
            }
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
                    api::dispatch(&self.broker, request)
                }
                Admission::Sasl => {
                    let reply = session.sasl(&request).await;
                    if !self.send_sasl_reply(reply, &tx, &activity).await {
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
            activity.owe();
            if tx.send(pending).await.is_err() {
                break;
            }
        }
        drop(tx);
        let _ = writer.await;
        tracing::debug!(%peer, "connection closed");
    }

    /// Queues the answer to a SASL step; false when the connection is to close.
    async fn send_sasl_reply(
        &self,
        reply: SaslReply,
        tx: &mpsc::Sender<Pending>,
        activity: &Activity,
    ) -> bool {
        let sent = match reply.response {
            Ok(bytes) => {
                activity.owe();
                tx.send(Pending::Ready(bytes)).await.is_ok()
            }
            Err(e) => {
                tracing::warn!(peer = %self.peer, error = %e, "closing connection");
                false
            }
        };
        sent && !reply.close
    }

    /// Waits for the next frame, under the size limit of the session's state, until the
    /// server shuts down, the authentication deadline passes (a session not yet
    /// authenticated) or the connection has been idle too long.
    async fn next_frame<R: AsyncRead + Unpin>(
        &self,
        reader: &mut FrameReader<R>,
        session: &Session,
        activity: &Activity,
    ) -> Wait {
        let peer = self.peer;
        let config = &self.broker.config;
        let limits = &config.connections;
        let authenticated = session.is_authenticated();
        let frame_limits = if authenticated {
            FrameLimits {
                any: config.max_request_bytes,
                control: config.max_control_request_bytes,
            }
        } else {
            FrameLimits::uniform(
                limits
                    .max_pre_auth_request_bytes
                    .min(config.max_request_bytes),
            )
        };
        let auth_deadline = (!authenticated).then(|| self.accepted + limits.authentication_timeout);
        // One read, polled until it completes: it is not cancel-safe, and a timer that
        // fires while a response is owed must not lose a half-read frame.
        let read = read_frame(reader, frame_limits);
        tokio::pin!(read);
        loop {
            let idle_at = activity.idle_deadline(limits.max_idle);
            tokio::select! {
                _ = self.shutdown.cancelled() => return Wait::Close,
                frame = &mut read => return Wait::Frame(frame),
                _ = tokio::time::sleep_until(auth_deadline.unwrap_or(idle_at)), if auth_deadline.is_some() => {
                    tracing::warn!(%peer, timeout = ?limits.authentication_timeout, "closing connection: not authenticated in time");
                    return Wait::Close;
                }
                _ = tokio::time::sleep_until(idle_at) => {
                    if activity.idle_deadline(limits.max_idle) <= Instant::now() {
                        tracing::debug!(%peer, max_idle = ?limits.max_idle, "closing idle connection");
                        return Wait::Close;
                    }
                }
            }
        }
    }
}

async fn write_responses<W: AsyncWrite + Unpin>(
    mut rx: mpsc::Receiver<Pending>,
    write_half: W,
    peer: SocketAddr,
    activity: Arc<Activity>,
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
        let written = out.write_all(&bytes).await;
        activity.paid();
        if written.is_err() {
            break;
        }
        if rx.is_empty() && out.flush().await.is_err() {
            break;
        }
    }
    let _ = out.flush().await;
    let _ = out.shutdown().await;
}
