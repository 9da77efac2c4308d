//! Work left to do when a policy's future is dropped or unwound by a panic before it ended
//! what it holds (a lease, a reservation): run in a task of its own, since a drop cannot
//! await.

use std::future::Future;

/// Spawns its release when dropped, unless [`ended`](ReleaseOnDrop::ended) first.
pub(crate) struct ReleaseOnDrop<F>
where
    F: Future<Output = ()> + Send + 'static,
{
    release: Option<F>,
}

impl<F> ReleaseOnDrop<F>
where
    F: Future<Output = ()> + Send + 'static,
{
    /// Holds `release` until the holder ends what it holds itself.
    pub(crate) fn new(release: F) -> Self {
        ReleaseOnDrop {
            release: Some(release),
        }
    }

    /// The holder ended it itself: nothing to release.
    pub(crate) fn ended(mut self) {
        self.release = None;
    }
}

impl<F> Drop for ReleaseOnDrop<F>
where
    F: Future<Output = ()> + Send + 'static,
{
    fn drop(&mut self) {
        let Some(release) = self.release.take() else {
            return;
        };
        // Outside a runtime (its shutdown) there is nothing to run it on: the lease expires.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(release);
        }
    }
}
