//! Runs of a many-entry script as the requests of [`Coalesced`]: each caller's keys and
//! arguments are one entry, and the script answers a fixed number of values per entry, in
//! order.

use std::collections::HashSet;
use std::ops::Range;

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

    /// Runs the script once for each stretch of entries that share no key
    /// ([`distinct_key_runs`]); in practice once.
    async fn run(&self, entries: Vec<Self::Request>) -> Result<Vec<Vec<Value>>, StoreError> {
        let mut answers = Vec::with_capacity(entries.len());
        for run in distinct_key_runs(&entries) {
            answers.extend(self.invoke(&entries[run]).await?);
        }
        Ok(answers)
    }
}

impl ScriptRuns {
    /// One run of the script over `entries`; each entry's answers.
    async fn invoke(
        &self,
        entries: &[(Vec<String>, Vec<String>)],
    ) -> Result<Vec<Vec<Value>>, StoreError> {
        let mut invocation = self.script.prepare_invoke();
        for (keys, args) in entries {
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

/// `entries` cut, in order, into stretches in which no key belongs to two entries (an entry
/// may name one key twice): a script reads all of a run's keys before it writes any, which
/// holds only when no entry's writes are another's reads. A key in two entries of one batch
/// is rare (the runtime runs one record of a key at a time); such a batch takes two runs, and
/// when the second fails every entry of the batch is answered with its error, those of the
/// first run too (what they took expires with its lease).
fn distinct_key_runs(entries: &[(Vec<String>, Vec<String>)]) -> Vec<Range<usize>> {
    let mut runs = Vec::new();
    let mut start = 0;
    let mut seen: HashSet<&str> = HashSet::new();
    for (i, (keys, _)) in entries.iter().enumerate() {
        if keys.iter().any(|k| seen.contains(k.as_str())) {
            runs.push(start..i);
            start = i;
            seen.clear();
        }
        seen.extend(keys.iter().map(String::as_str));
    }
    if start < entries.len() {
        runs.push(start..entries.len());
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::distinct_key_runs;

    fn entry(keys: &[&str]) -> (Vec<String>, Vec<String>) {
        (keys.iter().map(|k| (*k).to_owned()).collect(), Vec::new())
    }

    #[test]
    fn a_key_named_by_an_earlier_entry_starts_a_new_run() {
        let entries = [
            entry(&["a", "b", "a"]),
            entry(&["c"]),
            entry(&["d", "b"]),
            entry(&["e"]),
            entry(&["d"]),
        ];
        assert_eq!(distinct_key_runs(&entries), vec![0..2, 2..4, 4..5]);
        assert_eq!(distinct_key_runs(&entries[..2]), vec![0..2]);
        assert!(distinct_key_runs(&[]).is_empty());
    }
}
