//! Replays started from the console: each runs `Dlq::replay` (the code `steadfast dlq
//! replay` runs) in the background, and its page follows the progress.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use steadfast::dlq::{Dlq, ReplayOptions, ReplayReport, Selection};

/// Replays whose pages stay available (the running ones always do).
const KEPT: usize = 100;

/// A replay's state.
#[derive(Debug)]
pub(crate) struct Job {
    /// The console's number for it.
    pub(crate) id: u64,
    /// The replay id (progress is kept under it: a second replay of the same selection
    /// under it replays nothing).
    pub(crate) replay_id: String,
    /// The dead-letter topic and filters, as the query string of the list page.
    pub(crate) query: String,
    /// Records replayed or skipped so far.
    pub(crate) done: AtomicU64,
    /// Records selected (known once the selection is read).
    pub(crate) total: AtomicU64,
    /// The report, or why the replay failed; `None` while it runs.
    pub(crate) outcome: Mutex<Option<Result<ReplayReport, String>>>,
}

impl Job {
    /// Whether the replay still runs.
    pub(crate) fn running(&self) -> bool {
        self.outcome
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_none()
    }
}

/// The replays of this console, by number.
#[derive(Debug, Default)]
pub(crate) struct Replays {
    next: AtomicU64,
    jobs: Mutex<HashMap<u64, Arc<Job>>>,
}

impl Replays {
    /// The replay numbered `id`.
    pub(crate) fn get(&self, id: u64) -> Option<Arc<Job>> {
        let jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        jobs.get(&id).cloned()
    }

    /// Starts replaying `selection` under `replay_id` (at most `rate` records a second),
    /// unless a replay under that id runs
    /// already: then that one is returned (a form sent twice starts one replay).
    pub(crate) fn start(
        &self,
        dlq: &Dlq,
        selection: Selection,
        replay_id: String,
        rate: Option<std::num::NonZeroU32>,
        query: String,
    ) -> Arc<Job> {
        let job = {
            let mut jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(running) = jobs
                .values()
                .find(|j| j.replay_id == replay_id && j.running())
            {
                return running.clone();
            }
            let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
            let job = Arc::new(Job {
                id,
                replay_id: replay_id.clone(),
                query,
                done: AtomicU64::new(0),
                total: AtomicU64::new(0),
                outcome: Mutex::new(None),
            });
            // Finished replays beyond the newest KEPT are forgotten (their pages answer 404).
            if jobs.len() >= KEPT {
                let mut finished: Vec<u64> = jobs
                    .iter()
                    .filter(|(_, j)| !j.running())
                    .map(|(id, _)| *id)
                    .collect();
                finished.sort_unstable();
                let excess = jobs.len() + 1 - KEPT;
                for old in finished.into_iter().take(excess) {
                    jobs.remove(&old);
                }
            }
            jobs.insert(id, job.clone());
            job
        };
        let progress = job.clone();
        let mut options = ReplayOptions::default();
        if let Some(rate) = rate {
            options = options.with_rate(rate);
        }
        let options = options
            .with_replay_id(replay_id)
            .with_by("steadfast console")
            .with_progress(move |p| {
                progress.total.store(p.total, Ordering::Relaxed);
                progress.done.store(p.done, Ordering::Relaxed);
            });
        let dlq = dlq.clone();
        let running = job.clone();
        tokio::spawn(async move {
            let result = dlq
                .replay(&selection, options)
                .await
                .map_err(|e| e.to_string());
            if let Ok(report) = &result {
                running.total.store(report.selected, Ordering::Relaxed);
                running.done.store(report.selected, Ordering::Relaxed);
            }
            *running
                .outcome
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(result);
        });
        job
    }
}
