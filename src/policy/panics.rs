//! A panic anywhere below the route layer — in a message's `decode`, `key`, `version` or `id`,
//! in a user layer, in a store — fails its record permanently (class `panic`), as a panic of
//! the handler does: the route layer above dead-letters it and every other record goes on.
//! Without this the panic would end the record's task before the dispatcher heard of it: its
//! key, its concurrency slot and its partition's commit would wait for good.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::FutureExt;

use super::adapter::{wrap, Next, Policy, Wrap};
use super::clock::now_ms;
use super::stack::Assembly;
use crate::message::{panic_text, Envelope, ErrorClass, Failure, Outcome};

/// Catches a panic of the rest of the stack; see the module docs.
#[derive(Debug)]
pub(crate) struct CatchPanics;

/// Always on, right below the route layer.
pub(crate) fn build(_: &Assembly<'_>) -> Option<Wrap> {
    Some(wrap(CatchPanics))
}

impl Policy for CatchPanics {
    async fn call(self: Arc<Self>, envelope: Envelope, next: Next) -> Outcome {
        let attempt = envelope.attempt;
        let offset = envelope.offset;
        // The rest's future is made inside the caught one: a policy may do work (decode the
        // payload, say) before it returns its future.
        let run = async move { next.run(envelope).await };
        match AssertUnwindSafe(run).catch_unwind().await {
            Ok(outcome) => outcome,
            Err(panic) => {
                let text = panic_text(panic.as_ref());
                tracing::error!(offset, panic = %text, "a panic outside the handler; the message fails permanently");
                Outcome::Failed(Failure::new(
                    ErrorClass::Panic,
                    format!("panicked outside the handler: {text}"),
                    true,
                    attempt,
                    now_ms(),
                ))
            }
        }
    }
}
