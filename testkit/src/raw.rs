//! [`RawClient`]: the protocol client of `steadfast_server::client` with the conveniences a
//! test wants (a failure panics) and helpers for misbehaving on purpose.

use std::io::Read;
use std::net::{Shutdown, SocketAddr};
use std::time::Duration;

use kafka_protocol::protocol::Request;
use steadfast_server::client::{Client, ClientError};

/// How long a raw test client waits to connect and for each read and write.
const TIMEOUT: Duration = Duration::from_secs(10);

/// A blocking protocol connection for tests that must speak the protocol directly, or send
/// what no well-behaved client would.
#[derive(Debug)]
pub struct RawClient {
    client: Client,
}

impl RawClient {
    /// Connects to `addr`; panics if that fails.
    pub fn connect(addr: SocketAddr) -> Self {
        let client = Client::connect(&addr.to_string(), TIMEOUT)
            .unwrap_or_else(|e| panic!("raw client: {e}"))
            .with_client_id("raw-test");
        RawClient { client }
    }

    /// The client underneath, for what this wrapper does not offer.
    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }

    /// Encodes a request frame for `request` at `version` (length prefix included), to be
    /// sent as it is or altered first; [`Self::receive`] expects the response to it.
    pub fn frame<R: Request>(&mut self, request: &R, version: i16) -> Vec<u8> {
        self.client
            .encode_request(request, version)
            .unwrap_or_else(|e| panic!("raw client: {e}"))
    }

    /// Writes raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.client.send_raw(bytes)
    }

    /// Reads one response frame and decodes it as the answer to the last frame encoded;
    /// panics on anything else (a wrong correlation id, leftover bytes).
    pub fn receive<R: Request>(&mut self, version: i16) -> R::Response {
        self.client
            .receive::<R>(version)
            .unwrap_or_else(|e| panic!("raw client: {e}"))
    }

    /// Sends `request` and waits for its response; panics if that fails.
    pub fn call<R: Request>(&mut self, request: &R, version: i16) -> R::Response {
        self.client
            .call(request, version)
            .unwrap_or_else(|e| panic!("raw client: {e}"))
    }

    /// Whether the server closed the connection (read returns EOF or reset) within the
    /// timeout; bytes it sends meanwhile are skipped.
    pub fn is_closed_by_server(&mut self) -> bool {
        let mut buf = [0u8; 1024];
        loop {
            match self.client.stream().read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }

    /// Closes the sending side, as a client that stops mid-request would.
    pub fn stream_shutdown_write(&mut self) {
        self.client
            .stream()
            .shutdown(Shutdown::Write)
            .expect("shutdown write");
    }

    /// True when no byte arrives for `wait` (the connection stays open and silent).
    pub fn nothing_received_for(&mut self, wait: Duration) -> bool {
        let stream = self.client.stream();
        stream.set_read_timeout(Some(wait)).expect("timeout");
        let mut probe = [0u8; 1];
        let silent = matches!(
            stream.peek(&mut probe),
            Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut
        );
        stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        silent
    }
}
