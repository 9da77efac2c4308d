//! One adapter from a policy's logic to a stage of the stack, in the spirit of tower's
//! `service_fn`: a policy is a value with one `call` that gets the delivery and the rest of
//! the stack ([`Next`]); the adapter does the plumbing every policy used to repeat.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{Service, ServiceExt};

use crate::message::{Envelope, Outcome};

/// The future every policy service returns.
pub type OutcomeFuture = Pin<Box<dyn Future<Output = Result<Outcome, Infallible>> + Send>>;

/// The boxed service at the top of a stack.
pub type BoxedStack = tower::util::BoxCloneSyncService<Envelope, Outcome, Infallible>;

/// A policy: what it does around the rest of the stack. Every policy of the stack is one
/// of these, made from the worker's assembly (see `policy::STACK`).
pub(crate) trait Policy: fmt::Debug + Send + Sync + 'static {
    /// Handles `envelope`, calling `next` (the layers below and the handler) as often as the
    /// policy needs, or not at all.
    fn call(
        self: Arc<Self>,
        envelope: Envelope,
        next: Next,
    ) -> impl Future<Output = Outcome> + Send + 'static;
}

/// What a stage of the stack returns: the outcome, boxed once.
pub(crate) type StageFuture = Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// One stage of the stack, type-erased.
trait Stage: Send + Sync {
    fn run(&self, envelope: Envelope) -> StageFuture;
}

/// The rest of the stack below a policy; cheap to clone.
#[derive(Clone)]
pub(crate) struct Next(Arc<dyn Stage>);

impl fmt::Debug for Next {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Next")
    }
}

impl Next {
    /// The stack below is the tower service `service` (the handler, or users' layers).
    pub(crate) fn service<S: StageService>(service: S) -> Next {
        Next(Arc::new(ServiceStage(service)))
    }

    /// The stack below is `handle` (the handler).
    pub(crate) fn from_fn<F>(handle: F) -> Next
    where
        F: Fn(Envelope) -> StageFuture + Send + Sync + 'static,
    {
        Next(Arc::new(FnStage(handle)))
    }

    /// `policy` in front of `self`.
    pub(crate) fn with<P: Policy>(self, policy: P) -> Next {
        Next(Arc::new(PolicyStage {
            policy: Arc::new(policy),
            next: self,
        }))
    }

    /// Runs the rest of the stack on `envelope`.
    pub(crate) fn run(&self, envelope: Envelope) -> StageFuture {
        self.0.run(envelope)
    }
}

impl Service<Envelope> for Next {
    type Response = Outcome;
    type Error = Infallible;
    type Future = OutcomeFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, envelope: Envelope) -> OutcomeFuture {
        let running = self.0.run(envelope);
        Box::pin(async move { Ok(running.await) })
    }
}

/// A tower service that can be a stage of the stack (the stack's own service type).
pub(crate) trait StageService:
    Service<Envelope, Response = Outcome, Error = Infallible, Future = OutcomeFuture>
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> StageService for S where
    S: Service<Envelope, Response = Outcome, Error = Infallible, Future = OutcomeFuture>
        + Clone
        + Send
        + Sync
        + 'static
{
}

struct ServiceStage<S>(S);

impl<S: StageService> Stage for ServiceStage<S> {
    fn run(&self, envelope: Envelope) -> StageFuture {
        // `oneshot` waits for `poll_ready` first: a user's layer may limit or buffer.
        let call = self.0.clone().oneshot(envelope);
        Box::pin(async move {
            match call.await {
                Ok(outcome) => outcome,
                Err(never) => match never {},
            }
        })
    }
}

struct FnStage<F>(F);

impl<F> Stage for FnStage<F>
where
    F: Fn(Envelope) -> StageFuture + Send + Sync,
{
    fn run(&self, envelope: Envelope) -> StageFuture {
        (self.0)(envelope)
    }
}

struct PolicyStage<P> {
    policy: Arc<P>,
    next: Next,
}

impl<P: Policy> Stage for PolicyStage<P> {
    fn run(&self, envelope: Envelope) -> StageFuture {
        Box::pin(self.policy.clone().call(envelope, self.next.clone()))
    }
}

/// Puts a policy in front of a stack (what `policy::STACK`'s entries return).
pub(crate) type Wrap = Box<dyn FnOnce(Next) -> Next + Send>;

/// The [`Wrap`] of `policy`.
pub(crate) fn wrap<P: Policy>(policy: P) -> Wrap {
    Box::new(move |next| next.with(policy))
}
