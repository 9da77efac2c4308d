//! What the policies of a stack are made from, and the stack made from them in the order of
//! [`super::STACK`].

use std::convert::Infallible;
use std::sync::Arc;

use tower::{Layer, Service};

use tokio_util::sync::CancellationToken;

use super::adapter::BoxedStack;
use super::adapter::{Next, Wrap};
use super::breaker::state::Breaker;
use super::kept_leases::KeptLeases;
use super::sink::Sink;
use super::tier_topics::{RetryTiers, TierNames};
use crate::config::WorkerConfig;
use crate::message::{Envelope, Facts, Outcome};
use crate::observe::{Health, Meters};
use crate::store::guards::GuardStore;
use crate::store::StoreHandles;

/// A user's tower layer ([`crate::WorkerBuilder::layer`]), placed between retry in place
/// and the attempt's time limit: every attempt goes through it; the time limit applies to
/// the handler inside it, not to the layer's own waits.
#[derive(Clone)]
pub struct UserLayer(Arc<dyn Fn(BoxedStack) -> BoxedStack + Send + Sync>);

impl std::fmt::Debug for UserLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UserLayer")
    }
}

impl UserLayer {
    /// Type-erases `layer`, a tower layer over the rest of the stack.
    pub fn new<L>(layer: L) -> Self
    where
        L: Layer<BoxedStack> + Send + Sync + 'static,
        L::Service: Service<Envelope, Response = Outcome, Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        <L::Service as Service<Envelope>>::Future: Send + 'static,
    {
        UserLayer(Arc::new(move |inner| BoxedStack::new(layer.layer(inner))))
    }
}

/// Reads a delivery's facts: the message type's `key`, `version` and `id`.
pub type Describe = Arc<dyn Fn(&Envelope) -> Facts + Send + Sync>;

/// Where a stack's failed messages go, and how it publishes them.
#[derive(Debug, Clone)]
pub(crate) struct Routing {
    /// The retry tiers' delays.
    pub(crate) tiers: RetryTiers,
    /// The tiers' topic names.
    pub(crate) names: TierNames,
    /// The dead-letter topic (`<original topic>.dlq` when `None`).
    pub(crate) dead_letter: Option<String>,
    /// The tiers' partition count: a copy keeps its partition when the tier has it.
    pub(crate) tier_partitions: Option<i32>,
    /// Publishes the copies.
    pub(crate) sink: Arc<dyn Sink>,
}

/// Everything a policy of the stack may be built from.
pub(crate) struct Assembly<'a> {
    /// The worker's settings (each policy reads its own table).
    pub(crate) config: &'a WorkerConfig,
    /// The consumer group.
    pub(crate) group: &'a str,
    /// The stores, already connected (and observed for metrics and readiness).
    pub(crate) stores: &'a StoreHandles,
    /// The circuit breaker's state, shared with the consume loop, when it is on.
    pub(crate) breaker: Option<&'a Breaker>,
    /// Where failed messages go.
    pub(crate) routing: &'a Routing,
    /// Reads a delivery's key, version and id.
    pub(crate) describe: Describe,
    /// Fires once the drain deadline has passed.
    pub(crate) shutdown: &'a CancellationToken,
    /// The worker's metrics.
    pub(crate) meters: &'a Meters,
    /// The readiness probe's view of stores and dependencies.
    pub(crate) health: &'a Arc<Health>,
    /// This worker's name in dedup reservations.
    pub(crate) worker_id: &'a str,
    /// The user's own tower layers, outermost first.
    pub(crate) layers: &'a [UserLayer],
    /// The stale check, lock and dedup in one store call each way, where the worker connected
    /// them so; the three separate policies are then off.
    pub(crate) guards: Option<&'a Arc<dyn GuardStore>>,
    /// The handler takes batches: the time limit applies to each batch call, where the
    /// batches are run, not to each record.
    pub(crate) batched: bool,
    /// The key lock's leases kept between a key's records, when the worker has a lock store.
    pub(crate) kept_leases: Option<&'a Arc<KeptLeases>>,
    /// The stale check's versions are the rows the transactional store records versions in:
    /// a version a handler's committed transaction recorded need not be advanced again.
    pub(crate) versions_in_transactions: bool,
}

impl Assembly<'_> {
    /// Whether any policy needs the message facts (key, version, id).
    pub(crate) fn needs_facts(&self) -> bool {
        let s = self.stores;
        s.version.is_some() || s.lock.is_some() || s.dedup.is_some() || s.transactions.is_some()
    }

    /// After how many refusals a store call before the handler gives up on the message
    /// (`stores.dead_letter_after_refusals`); `None`: never.
    pub(crate) fn give_up_after(&self) -> Option<std::num::NonZeroU32> {
        self.config
            .stores
            .dead_letter_after_refusals
            .and_then(std::num::NonZeroU32::new)
    }
}

/// The user's layers ([`crate::WorkerBuilder::layer`]), in the order they were added, the
/// first outermost.
pub(crate) fn user_layers(a: &Assembly<'_>) -> Option<Wrap> {
    if a.layers.is_empty() {
        return None;
    }
    let layers = a.layers.to_vec();
    let shutdown = a.shutdown.clone();
    Some(Box::new(move |next: Next| {
        let inner = layers
            .iter()
            .rev()
            .fold(BoxedStack::new(next), |inner, layer| (layer.0)(inner));
        let shutdown = shutdown.clone();
        Next::service(BoxedStack::new(tower::service_fn(
            move |envelope: Envelope| {
                let attempt = envelope.attempt;
                let shutdown = shutdown.clone();
                let run = tower::ServiceExt::oneshot(inner.clone(), envelope);
                async move {
                    let outcome = run.await.unwrap_or_else(|never| match never {});
                    Ok::<_, Infallible>(handed_back(outcome, attempt, &shutdown))
                }
            },
        )))
    }))
}

/// A user layer's `Outcome::Requeue` while the worker runs (load shedding, say): the message
/// is waited with in place and tried again (`unavailable`: with backoff, without spending an
/// attempt, never routed), as for a dependency that does not answer. The runtime requeues
/// only what a stop or a revoke leaves unfinished; a record requeued while its partition
/// stays here would hold the partition's commit until the partition is read again.
fn handed_back(outcome: Outcome, attempt: u32, shutdown: &CancellationToken) -> Outcome {
    if outcome != Outcome::Requeue || shutdown.is_cancelled() {
        return outcome;
    }
    Outcome::Failed(crate::message::Failure {
        unavailable: true,
        ..crate::message::Failure::new(
            crate::message::ErrorClass::Transient,
            "a layer handed the message back (Outcome::Requeue) while the worker runs; \
             tried again without spending an attempt"
                .to_owned(),
            false,
            attempt,
            super::clock::now_ms(),
        )
    })
}
