//! The broker side through librdkafka: turning records into envelopes, publishing routed
//! copies with an idempotent producer, and creating the retry and dead-letter topics.

mod producer;
mod records;
mod topics;

pub(crate) use self::producer::{owned_headers, KafkaSink};
pub(crate) use self::records::{envelope_of, headers_of, TopicNames};
pub(crate) use self::topics::ensure_topics;

/// Drops a librdkafka client where its destruction may block: on a blocking thread when
/// called inside a Tokio runtime (not waited for), else here. A `FutureProducer` flushes
/// for up to 500 ms and joins a polling thread that wakes every 100 ms; an admin client
/// joins such a thread too: neither belongs on an async worker thread.
pub(crate) fn drop_client<T: Send + 'static>(client: T) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn_blocking(move || drop(client));
        }
        Err(_) => drop(client),
    }
}

/// A librdkafka client that [`drop_client`] closes once it is dropped, wherever the last
/// holder lets go of it.
pub(crate) struct Closing<T: Send + 'static>(Option<T>);

impl<T: Send + 'static> Closing<T> {
    /// Holds `client` until dropped.
    pub(crate) fn new(client: T) -> Self {
        Closing(Some(client))
    }
}

impl<T: Send + 'static> std::ops::Deref for Closing<T> {
    type Target = T;

    fn deref(&self) -> &T {
        // Taken only by `drop`.
        self.0
            .as_ref()
            .expect("a client is held until it is dropped")
    }
}

impl<T: Send + 'static> Drop for Closing<T> {
    fn drop(&mut self) {
        if let Some(client) = self.0.take() {
            drop_client(client);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::thread::ThreadId;

    use super::Closing;

    /// Says on which thread it was dropped.
    struct Tattler(mpsc::Sender<ThreadId>);

    impl Drop for Tattler {
        fn drop(&mut self) {
            let _ = self.0.send(std::thread::current().id());
        }
    }

    /// Inside a runtime the client is dropped on another thread than the async one that
    /// let go of it.
    #[tokio::test(flavor = "current_thread")]
    async fn a_client_let_go_of_on_an_async_thread_is_dropped_elsewhere() {
        let (tx, rx) = mpsc::channel();
        let client = Closing::new(Tattler(tx));
        drop(client);
        let dropped_on = tokio::task::spawn_blocking(move || {
            rx.recv_timeout(std::time::Duration::from_secs(10))
        })
        .await
        .expect("the waiting task ends")
        .expect("the client was dropped");
        assert_ne!(dropped_on, std::thread::current().id());
    }

    /// Outside a runtime it is dropped at once, where it is let go of.
    #[test]
    fn a_client_let_go_of_outside_a_runtime_is_dropped_there() {
        let (tx, rx) = mpsc::channel();
        drop(Closing::new(Tattler(tx)));
        assert_eq!(rx.try_recv(), Ok(std::thread::current().id()));
    }
}
