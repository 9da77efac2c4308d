//! The replay itself, blocking (run it on a blocking thread): read the selection from the
//! committed position, find copies an interrupted run left ([`super::plan`]), produce the rest
//! in order with an idempotent producer, and commit the position after every acknowledged
//! stretch ([`super::produce`]).

use std::collections::{BTreeMap, BTreeSet};

use rdkafka::config::ClientConfig;

use super::plan::Found;
use super::produce::{Producing, Progressor};
use super::resume::{ProgressNote, TargetReach};
use super::{ReplayOptions, ReplayReport, ReplayStarted, ReplayedRecord};
use crate::dlq::error::DlqError;
use crate::dlq::record::DlqRecord;
use crate::dlq::scan;
use crate::dlq::selection::Selection;

/// Runs a replay of `selection` with `options` against the brokers of `config`.
pub(crate) fn replay_blocking(
    config: &ClientConfig,
    selection: &Selection,
    options: &ReplayOptions,
) -> Result<ReplayReport, DlqError> {
    selection.validate()?;
    let to = options.to.as_deref();
    let fingerprint = selection.fingerprint_with_target(to);
    let replay_id = replay_id_of(options, &fingerprint);
    let group = format!("steadfast-replay-{replay_id}");
    if let (false, Some(started)) = (options.dry_run, &options.started) {
        started(&ReplayStarted {
            replay_id: replay_id.clone(),
            group: group.clone(),
        });
    }
    let consumer = scan::reader(config, Some(&group))?;
    let dlq = selection.topic.as_str();
    let found = Found::read(&consumer, selection, &replay_id, &fingerprint, to)?;
    let planned = found.planned(to);
    let already_replayed = found.done_before() + found.already.len() as u64;
    let mut report = ReplayReport {
        replay_id: replay_id.clone(),
        group,
        dry_run: options.dry_run,
        selected: found.records.len() as u64,
        already_replayed,
        found_past_commit: found.already.len() as u64,
        replayed: Vec::new(),
    };
    if options.dry_run {
        report.replayed = planned.into_iter().map(|(_, p)| p).collect();
        return Ok(report);
    }

    let mut ends = found.ends_before_producing(&consumer)?;
    let positions = found.start_positions();
    let reach = reach_of(&planned, &found.targets);
    let mut note = ProgressNote::new(fingerprint, report.already_replayed);
    let mut progress = Progressor {
        replay_id: &replay_id,
        consumer: &consumer,
        dlq,
        already: &found.already,
        reach: &reach,
        note: &mut note,
        ends: &mut ends,
    };
    progress.commit(&positions)?;

    let mut producing = Producing::new(config, options, &replay_id, &found.records, positions)?;
    producing.all(planned, &mut progress, &mut report)?;
    producing.finish(found.highs, &mut progress, &mut report)?;
    report
        .replayed
        .sort_by_key(|r| (r.of.partition, r.of.offset));
    Ok(report)
}

/// The replay's id: the one given, a fresh one (`--fresh`), or the selection's fingerprint
/// (so that running the same replay again resumes it).
fn replay_id_of(options: &ReplayOptions, fingerprint: &str) -> String {
    match (&options.replay_id, options.fresh) {
        (Some(id), _) if !id.trim().is_empty() => id.trim().to_owned(),
        (_, true) => format!(
            "{fingerprint}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        ),
        _ => fingerprint.to_owned(),
    }
}

/// Where each planned copy can go: its partition, or every partition of its target topic
/// when it goes to its key's partition.
fn reach_of(
    planned: &[(&DlqRecord, ReplayedRecord)],
    targets: &BTreeMap<String, BTreeSet<i32>>,
) -> TargetReach {
    let mut reach = TargetReach::default();
    for (record, copy) in planned {
        let tps: Vec<i32> = match copy.partition {
            Some(p) => vec![p],
            None => targets
                .get(&copy.topic)
                .map(|ps| ps.iter().copied().collect())
                .unwrap_or_default(),
        };
        for p in tps {
            reach.add((copy.topic.clone(), p), record.partition, record.offset);
        }
    }
    reach
}
