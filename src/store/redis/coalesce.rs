//! Runs of a many-entry script as the requests of [`Coalesced`]: each caller's keys and
//! arguments are one entry, and the script answers a fixed number of values per entry, in
//! order.

use redis::aio::ConnectionManager;
use redis::{Script, Value};

use crate::store::coalesce::{Coalesced, Combine};
use crate::store::StoreError;

/// A script and the connection it runs on.
#[derive(Clone)]
pub(super) struct ScriptRuns {
    script: &'static Script,
    answers: usize,
    conn: ConnectionManager,
}

/// Coalesced runs of one script.
pub(super) type CoalescedScript = Coalesced<ScriptRuns>;

impl ScriptRuns {
    /// Runs of `script`, which answers `answers` values per entry, over `conn`, coalesced.
    pub(super) fn coalesced(
        script: &'static Script,
        answers: usize,
        conn: ConnectionManager,
    ) -> CoalescedScript {
        Coalesced::new(ScriptRuns {
            script,
            answers,
            conn,
        })
    }
}

impl Combine for ScriptRuns {
    /// An entry's keys and arguments.
    type Request = (Vec<String>, Vec<String>);
    /// The entry's answers.
    type Answer = Vec<Value>;
    const BACKEND: &'static str = "redis";

    async fn run(&self, entries: Vec<Self::Request>) -> Result<Vec<Vec<Value>>, StoreError> {
        let mut invocation = self.script.prepare_invoke();
        for (keys, args) in &entries {
            for key in keys {
                invocation.key(key);
            }
            for arg in args {
                invocation.arg(arg);
            }
        }
        let values: Vec<Value> = invocation
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(StoreError::from)?;
        if values.len() != entries.len() * self.answers {
            return Err(StoreError::failed(
                "redis",
                format!(
                    "a script answered {} values for {} entries of {} each",
                    values.len(),
                    entries.len(),
                    self.answers
                ),
            ));
        }
        let mut values = values.into_iter();
        Ok(entries
            .iter()
            .map(|_| values.by_ref().take(self.answers).collect())
            .collect())
    }
}
