//! Runs short blocking disk work (segment rolls, topic creation and deletion) without
//! stalling the async worker thread that asked for it.
//!
//! Callers need the result before they return (a request takes effect before the next
//! request of its connection is read), so the work cannot simply be handed to another
//! thread and awaited. On a multi-thread runtime it runs under
//! [`tokio::task::block_in_place`]: the worker hands its other tasks to a fresh worker
//! first, so they keep running while this thread waits for the disk. Elsewhere (a
//! current-thread runtime, or no runtime) it runs inline.

use tokio::runtime::{Handle, RuntimeFlavor};

/// Runs `work`, letting the runtime move other tasks off this thread while it blocks.
pub(crate) fn run<T>(work: impl FnOnce() -> T) -> T {
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
        _ => work(),
    }
}
