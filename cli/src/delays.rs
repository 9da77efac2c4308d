//! `steadfast delays relay`: the relay of a topic's delayed messages as a process of its own
//! (a worker runs the same relay with `relay_delayed_messages = true`).

use anyhow::Context;
use clap::{Args, Subcommand};
use steadfast::delay::{Relay, DEFAULT_BUFFER_LIMIT};
use tokio_util::sync::CancellationToken;

use crate::client::{Connection, ShutdownSignals};

/// Options of `steadfast delays`.
#[derive(Debug, Args)]
pub(crate) struct DelaysArgs {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    action: DelaysAction,
}

#[derive(Debug, Subcommand)]
enum DelaysAction {
    /// Deliver the delayed records of a topic when they are due, until SIGTERM or Ctrl-C:
    /// creates the bucket topics (`<topic>.delay.1` to `.9`) where missing and joins the
    /// group `<topic>.delay-relay` (run several for more throughput or for failover).
    Relay {
        /// The topic whose delayed records are relayed (it must exist).
        #[arg(long, short = 't')]
        topic: String,
        /// Records one bucket partition holds in memory before it pauses.
        #[arg(long, default_value_t = DEFAULT_BUFFER_LIMIT)]
        buffer_limit: usize,
        /// Where a record goes when the broker refuses its move for good (too large for the
        /// topic, not authorized); `<topic>.dlq` by default. It must exist.
        #[arg(long)]
        dead_letter_topic: Option<String>,
    },
}

/// Runs `steadfast delays`.
pub(crate) async fn delays(args: DelaysArgs) -> anyhow::Result<()> {
    match args.action {
        DelaysAction::Relay {
            topic,
            buffer_limit,
            dead_letter_topic,
        } => {
            let mut signals = ShutdownSignals::install()?;
            let mut relay = Relay::new(&topic, args.connection.config()).buffer_limit(buffer_limit);
            if let Some(dead_letters) = dead_letter_topic {
                relay = relay.dead_letter_topic(dead_letters);
            }
            let partitions = relay
                .ensure_topics()
                .await
                .with_context(|| format!("at {}", args.connection.bootstrap()))?;
            eprintln!(
                "relaying the delayed records of `{topic}` ({partitions} partitions a bucket) as group `{}`; refused records go to `{}`",
                relay.group(),
                relay.dead_letter()
            );
            let stop = CancellationToken::new();
            let trigger = stop.clone();
            tokio::spawn(async move {
                signals.recv().await;
                trigger.cancel();
            });
            let stats = relay.run(stop).await?;
            eprintln!(
                "stopped: {} delivered, {} moved to a shorter bucket, {} dead-lettered",
                stats.delivered, stats.hopped, stats.dead_lettered
            );
            Ok(())
        }
    }
}
