//! Assembles a worker's policy stack from its configuration, its connected stores and the
//! user's layers, in the order of [`crate::policy::STACK`].

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::guards::Guards;
use crate::config::WorkerConfig;
use crate::handler::{self, BatchService, BatchSettings, Handler, HandlerService};
use crate::observe::Meters;
use crate::policy::{self, Assembly, BoxedStack, Next, Routing, UserLayer};
use crate::producer::Producer;

/// The stack for `handler`: every policy that is on, around the handler.
#[allow(clippy::too_many_arguments)]
pub(crate) fn build_stack<H: Handler>(
    handler: Arc<H>,
    config: &WorkerConfig,
    group: &str,
    routing: &Routing,
    guards: &Guards,
    layers: &[UserLayer],
    shutdown: &CancellationToken,
    meters: &Meters,
    producer: Producer,
) -> BoxedStack {
    let worker_id = worker_id();
    let runner = handler::runner_of(&handler);
    let assembly = Assembly {
        config,
        group,
        stores: &guards.stores,
        breaker: guards.breaker.as_ref(),
        routing,
        describe: policy::describe::<H::Message>(group),
        shutdown,
        meters,
        health: &guards.health,
        worker_id: &worker_id,
        layers,
        guards: guards.combined.as_ref(),
        batched: runner.is_some(),
        kept_leases: guards.kept_leases.as_ref(),
        versions_in_transactions: guards.versions_in_transactions,
    };
    let transactions = guards.stores.transactions.clone();
    let handler = match runner {
        Some(runner) => {
            let batches =
                BatchService::new(runner, batch_settings(config), group, shutdown.clone())
                    .with_transactions(transactions)
                    .with_producer(producer)
                    .with_dependencies(guards.dependencies.clone())
                    .timed(
                        meters.handler_duration.clone(),
                        meters.batch_records.clone(),
                    );
            Next::from_fn(move |envelope| Box::pin(batches.handle(envelope)))
        }
        None => {
            let handler = HandlerService::new(handler, group, shutdown.clone())
                .with_transactions(transactions)
                .with_producer(producer)
                .with_dependencies(guards.dependencies.clone())
                .timed(meters.handler_duration.clone());
            Next::from_fn(move |envelope| Box::pin(handler.handle(envelope)))
        }
    };
    policy::assemble(&assembly, handler)
}

/// How a batch handler's batches are formed and run: `concurrency` counts batch calls.
pub(crate) fn batch_settings(config: &WorkerConfig) -> BatchSettings {
    BatchSettings {
        max_records: config.max_batch.max(1),
        linger: Duration::from_millis(config.batch_linger_ms),
        concurrency: config.concurrency.max(1),
        timeout: Duration::from_millis(config.handler_timeout_ms),
    }
}

/// This worker's name in dedup reservations: process id, start time and a random part
/// (containers often all run as process 1).
fn worker_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    format!("{}-{:x}-{random:x}", std::process::id(), policy::now_ms())
}
