//! A user's crate, as far as cargo can tell: it depends on steadfast by path, from outside
//! steadfast's workspace, so it gets exactly the dependencies a user gets — none of the
//! workspace's `[patch]` sections or settings apply here.
//!
//! Its test checks what such a crate relies on when it embeds the server (the default `server`
//! feature): a request that claims an array of 2^31 elements is refused without the process
//! trying to allocate for them (the stock kafka-protocol 0.18.0 decoders abort the process on
//! that allocation), and the server keeps serving.
//!
//! The requests are written byte by byte, as any client on the network could send them. A
//! second module runs the store conformance suite steadfast exports, as a crate with a store
//! backend of its own does.

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    const METADATA: i16 = 3;
    const API_VERSIONS: i16 = 18;
    /// How long the server has to answer or close.
    const PATIENCE: Duration = Duration::from_secs(20);

    /// A request frame: length prefix, a v1 request header (`client_id` `dependent`), body.
    fn frame(api_key: i16, version: i16, correlation: i32, flexible: bool, body: &[u8]) -> Vec<u8> {
        let mut request = Vec::new();
        request.extend_from_slice(&api_key.to_be_bytes());
        request.extend_from_slice(&version.to_be_bytes());
        request.extend_from_slice(&correlation.to_be_bytes());
        let client_id = b"dependent";
        request.extend_from_slice(&(client_id.len() as i16).to_be_bytes());
        request.extend_from_slice(client_id);
        if flexible {
            request.push(0); // no tagged fields in the header
        }
        request.extend_from_slice(body);
        let mut framed = (request.len() as i32).to_be_bytes().to_vec();
        framed.extend_from_slice(&request);
        framed
    }

    /// `n` as an unsigned varint.
    fn varint(mut n: u64) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return out;
            }
            out.push(byte | 0x80);
        }
    }

    /// Sends `request` on a fresh connection and expects the server to close it (the answer
    /// to a request it cannot decode), neither answering nor hanging.
    async fn refused(addr: std::net::SocketAddr, request: &[u8], what: &str) {
        let mut conn = TcpStream::connect(addr).await.expect("connect");
        conn.write_all(request).await.expect("send");
        let mut buf = vec![0u8; 4096];
        match tokio::time::timeout(PATIENCE, conn.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {} // closed (or reset) by the server
            // Metadata has no request-level error code: a refusal is a closed connection.
            Ok(Ok(n)) => panic!(
                "{what}: the server answered {:?} instead of closing the connection",
                &buf[..n.min(32)]
            ),
            Err(_) => panic!("{what}: neither an answer nor a closed connection in {PATIENCE:?}"),
        }
    }

    /// ApiVersions v0 on a fresh connection: the highest Metadata version served, after
    /// checking that the answer carries no error.
    async fn metadata_max_version(addr: std::net::SocketAddr) -> Option<i16> {
        let mut conn = TcpStream::connect(addr).await.expect("connect");
        conn.write_all(&frame(API_VERSIONS, 0, 7, false, &[]))
            .await
            .expect("send");
        let answer = async {
            let len = conn.read_i32().await.expect("length");
            let mut body = vec![0u8; usize::try_from(len).expect("a positive length")];
            conn.read_exact(&mut body).await.expect("body");
            body
        };
        let body = tokio::time::timeout(PATIENCE, answer)
            .await
            .expect("ApiVersions answered");
        assert_eq!(&body[..4], &7i32.to_be_bytes(), "the correlation id");
        assert_eq!(&body[4..6], &[0, 0], "error code NONE");
        let count = i32::from_be_bytes(body[6..10].try_into().expect("4 bytes"));
        (0..usize::try_from(count).expect("a count")).find_map(|i| {
            let at = 10 + i * 6; // key, min version, max version
            let key = i16::from_be_bytes([body[at], body[at + 1]]);
            (key == METADATA).then(|| i16::from_be_bytes([body[at + 4], body[at + 5]]))
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_claimed_array_of_2_pow_31_elements_is_refused_and_the_server_keeps_serving() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let server = steadfast::server::Server::builder()
            .listen("127.0.0.1:0")
            .data_dir(dir.path())
            .start()
            .await
            .expect("the embedded server starts");
        let addr = server.local_addr();
        // The requests below must reach the decoder, not stop at an unserved version.
        let max = metadata_max_version(addr).await.expect("Metadata is served");
        assert!(max >= 9, "Metadata v9 is served (up to v{max})");

        // Metadata v1: `topics` is an int32-length array; claim i32::MAX (2^31 - 1) topics
        // and send none.
        let body = i32::MAX.to_be_bytes();
        refused(
            addr,
            &frame(METADATA, 1, 1, false, &body),
            "Metadata v1 claiming 2^31 - 1 topics",
        )
        .await;
        assert_eq!(metadata_max_version(addr).await, Some(max), "still serving");

        // Metadata v9 (flexible): `topics` is a compact array whose length is sent plus one;
        // claim 2^31 topics and send none.
        let body = varint((1u64 << 31) + 1);
        refused(
            addr,
            &frame(METADATA, 9, 2, true, &body),
            "Metadata v9 claiming 2^31 topics",
        )
        .await;
        assert_eq!(metadata_max_version(addr).await, Some(max), "still serving");

        server.shutdown().await;
    }
}

/// The store conformance suite, exported by steadfast, run from this crate as a user's crate
/// with a backend of its own would run it: the macro's paths and the checks work from outside
/// steadfast. Its backend here is steadfast's memory stores (this is their conformance run;
/// Redis and Postgres run it in `tests/store_conformance_<backend>.rs`).
#[cfg(test)]
mod store_conformance {
    use std::sync::Arc;

    use steadfast::store::memory::{
        MemoryDedupStore, MemoryLockStore, MemoryRateLimitStore, MemoryVersionStore,
    };
    use steadfast::store::{DedupStore, LockStore, RateLimitStore, VersionStore};

    fn lock() -> Arc<dyn LockStore> {
        Arc::new(MemoryLockStore::new())
    }
    fn dedup() -> Arc<dyn DedupStore> {
        Arc::new(MemoryDedupStore::new())
    }
    fn version() -> Arc<dyn VersionStore> {
        Arc::new(MemoryVersionStore::new())
    }
    fn rate() -> Arc<dyn RateLimitStore> {
        Arc::new(MemoryRateLimitStore::new())
    }

    steadfast::store_conformance_tests!(
        lock: lock(),
        dedup: dedup(),
        version: version(),
        rate: rate(),
    );
}
