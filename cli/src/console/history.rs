//! Samples of the cluster taken every interval (by the console's sampler) and kept for an hour: topics' log ends (for
//! rates) and every group's lag per partition (for the charts).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::cluster;
use super::layout::Series;
use crate::client::Connection;
use crate::groups::describe_view;

/// How far back samples are kept.
pub(crate) const SPAN: Duration = Duration::from_secs(3600);

/// One look at the cluster.
#[derive(Debug)]
pub(crate) struct Sample {
    /// When it was taken, in milliseconds since the epoch.
    pub(crate) at_ms: i64,
    /// Log ends summed, by topic.
    pub(crate) topics: HashMap<String, i64>,
    /// Lag by group, then by topic and partition (partitions with a commit).
    pub(crate) groups: HashMap<String, BTreeMap<(String, i32), i64>>,
}

/// The samples of the last [`SPAN`], oldest first.
#[derive(Debug, Default)]
pub(crate) struct History {
    samples: Mutex<VecDeque<Arc<Sample>>>,
}

impl History {
    /// Keeps `sample`, dropping those older than [`SPAN`] before it.
    pub(crate) fn push(&self, sample: Sample) {
        let mut samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        let oldest = sample.at_ms - SPAN.as_millis() as i64;
        while samples.front().is_some_and(|s| s.at_ms < oldest) {
            samples.pop_front();
        }
        samples.push_back(Arc::new(sample));
    }

    fn all(&self) -> Vec<Arc<Sample>> {
        let samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        samples.iter().cloned().collect()
    }

    /// The newest sample.
    pub(crate) fn latest(&self) -> Option<Arc<Sample>> {
        let samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        samples.back().cloned()
    }

    /// Records a second appended to `topic` between the two newest samples that saw it.
    pub(crate) fn rate(&self, topic: &str) -> Option<f64> {
        let samples = self.all();
        let mut seen = samples
            .iter()
            .rev()
            .filter_map(|s| s.topics.get(topic).map(|end| (s.at_ms, *end)));
        let (t1, e1) = seen.next()?;
        let (t0, e0) = seen.next()?;
        (t1 > t0).then(|| (e1 - e0).max(0) as f64 * 1000.0 / (t1 - t0) as f64)
    }

    /// The lag of `group` over the kept samples: its total, then each partition.
    pub(crate) fn group_series(&self, group: &str) -> Vec<Series> {
        let mut total = Series {
            name: "total".to_owned(),
            points: Vec::new(),
        };
        let mut partitions: BTreeMap<(String, i32), Vec<(i64, i64)>> = BTreeMap::new();
        for s in self.all() {
            let Some(lags) = s.groups.get(group) else {
                continue;
            };
            total.points.push((s.at_ms, lags.values().sum()));
            for (tp, lag) in lags {
                partitions
                    .entry(tp.clone())
                    .or_default()
                    .push((s.at_ms, *lag));
            }
        }
        let mut series = vec![total];
        // Beyond a handful, per-partition lines are noise: the table has them.
        if partitions.len() > 1 && partitions.len() <= 7 {
            series.extend(partitions.into_iter().map(|((topic, p), points)| Series {
                name: format!("{topic}/{p}"),
                points,
            }));
        }
        series
    }
}

/// One sample. Blocking.
pub(crate) fn take(connection: &Connection) -> anyhow::Result<Sample> {
    let at_ms = now_ms();
    let topics = cluster::topics(connection)?
        .into_iter()
        .map(|t| (t.name, t.log_end))
        .collect();
    let mut groups = HashMap::new();
    for g in cluster::groups(connection)? {
        // A group this client may not read, or one deleted meanwhile, is left out of this
        // sample; the others are kept.
        let view = match describe_view(connection, &g.name, &[], false) {
            Ok(view) => view,
            Err(e) => {
                tracing::debug!("sampling group {}: {e:#}", g.name);
                continue;
            }
        };
        let lags = view
            .partitions
            .into_iter()
            .filter_map(|p| Some(((p.topic, p.partition), p.lag?)))
            .collect();
        groups.insert(g.name, lags);
    }
    Ok(Sample {
        at_ms,
        topics,
        groups,
    })
}

/// Now, in milliseconds since the epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_ms: i64, end: i64, lag: i64) -> Sample {
        Sample {
            at_ms,
            topics: HashMap::from([("t".to_owned(), end)]),
            groups: HashMap::from([(
                "g".to_owned(),
                BTreeMap::from([(("t".to_owned(), 0), lag), (("t".to_owned(), 1), 1)]),
            )]),
        }
    }

    #[test]
    fn rates_come_from_the_two_newest_samples_and_old_ones_go() {
        let history = History::default();
        assert_eq!(history.rate("t"), None);
        history.push(sample(1_000, 100, 9));
        assert_eq!(history.rate("t"), None);
        history.push(sample(3_000, 300, 5));
        history.push(sample(4_000, 700, 2));
        assert_eq!(history.rate("t"), Some(400.0));
        assert_eq!(history.rate("other"), None);
        let series = history.group_series("g");
        assert_eq!(series[0].points, vec![(1_000, 10), (3_000, 6), (4_000, 3)]);
        assert_eq!(series.len(), 3, "total and two partitions");
        history.push(sample(4_000 + SPAN.as_millis() as i64, 700, 0));
        assert_eq!(
            history.all().len(),
            2,
            "samples older than an hour are dropped"
        );
    }
}
