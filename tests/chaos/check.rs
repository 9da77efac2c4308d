//! The invariants, checked from outside the workers once a seed has drained: what Postgres
//! holds, what the dead-letter topic and the retry tiers hold, and what the handler-run logs
//! say. Each violation is one line naming its invariant, the group and the record.

use std::collections::BTreeMap;
use std::time::SystemTime;

use steadfast_testkit::Received;

use crate::infra::{secs_since, HandlerRun};
use crate::plan::{Expect, Kind, Plan, Rec, TIERS, UNDECODABLE};

/// One row of `effects`, in `(group, key, finished_at)` order.
#[derive(Debug, Clone)]
pub struct Effect {
    pub group: String,
    pub id: String,
    pub key: String,
    pub version: i64,
    pub attempt: i32,
    pub pid: i32,
}

/// What the run left behind.
#[derive(Debug)]
pub struct Observed {
    pub effects: Vec<Effect>,
    pub dlq: Vec<Received>,
    /// Per group, per tier (1, 2): the tier topic's records.
    pub tiers: [[Vec<Received>; 2]; 2],
    pub runs: Vec<HandlerRun>,
    /// Per worker: when it died (ns), if it did.
    pub deaths: BTreeMap<String, Option<i64>>,
}

/// Violations, grouped by invariant so a broken one does not drown the others.
#[derive(Debug, Default)]
pub struct Violations(BTreeMap<&'static str, Vec<String>>);

impl Violations {
    fn add(&mut self, invariant: &'static str, what: String) {
        self.0.entry(invariant).or_default().push(what);
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// The invariants that failed, by name.
    pub fn names(&self) -> Vec<&'static str> {
        self.0.keys().copied().collect()
    }
    /// Up to `per` lines per invariant, with the count of the rest.
    pub fn report(&self, per: usize) -> String {
        let mut out = String::new();
        for (name, lines) in &self.0 {
            out.push_str(&format!(
                "  invariant `{name}`: {} violation(s)\n",
                lines.len()
            ));
            for l in lines.iter().take(per) {
                out.push_str(&format!("    - {l}\n"));
            }
            if lines.len() > per {
                out.push_str(&format!("    - ... and {} more\n", lines.len() - per));
            }
        }
        out
    }
}

pub fn header(r: &Received, name: &str) -> Option<String> {
    r.headers
        .iter()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| v.as_deref())
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// The record id of a copy: from its JSON, or after the undecodable prefix.
fn id_of(r: &Received) -> String {
    let payload = r.payload.as_deref().unwrap_or_default();
    if let Some(id) = payload.strip_prefix(UNDECODABLE) {
        return String::from_utf8_lossy(id).into_owned();
    }
    serde_json::from_slice::<Rec>(payload).map_or_else(
        |_| {
            format!(
                "<unreadable payload {:?}>",
                String::from_utf8_lossy(payload)
            )
        },
        |rec| rec.id,
    )
}

/// Everything the seed must satisfy. `groups` are the group names, `delivered` the
/// (partition, offset) of every produced record, in plan order.
pub fn check(
    plan: &Plan,
    topic: &str,
    groups: &[String],
    delivered: &[(i32, i64)],
    obs: &Observed,
    origin: SystemTime,
) -> Violations {
    let mut v = Violations::default();
    // Where each id was first delivered (duplicates repeat an id; provenance is the original).
    let mut first_at: BTreeMap<&str, (i32, i64)> = BTreeMap::new();
    let mut version_of: BTreeMap<&str, (&str, i64)> = BTreeMap::new();
    for (r, at) in plan.records.iter().zip(delivered) {
        if !matches!(r.kind, Kind::Duplicate { .. }) {
            first_at.insert(&r.id, *at);
            if let Some(rec) = &r.rec {
                version_of.insert(&r.id, (&r.key, rec.version));
            }
        }
    }
    for (g, group) in groups.iter().enumerate() {
        let tag = format!("group {}", plan.groups[g].label);
        let expect = plan.expectations(g);
        let effects: Vec<&Effect> = obs.effects.iter().filter(|e| &e.group == group).collect();
        let mut applied: BTreeMap<&str, Vec<&Effect>> = BTreeMap::new();
        for e in &effects {
            applied.entry(&e.id).or_default().push(e);
        }
        // The dead letters of this group, by id.
        let mut dead: BTreeMap<String, Vec<&Received>> = BTreeMap::new();
        for r in &obs.dlq {
            if header(r, "steadfast-group").as_deref() == Some(group.as_str()) {
                dead.entry(id_of(r)).or_default().push(r);
            }
        }
        let max_applied: BTreeMap<&str, i64> = effects.iter().fold(BTreeMap::new(), |mut m, e| {
            let v = m.entry(e.key.as_str()).or_insert(i64::MIN);
            *v = (*v).max(e.version);
            m
        });

        // Exactly once, and nothing else; attempts as expected.
        for (id, exp) in &expect {
            let times = applied.get(id.as_str()).map_or(0, Vec::len);
            let letters = dead.get(id).map_or(&[][..], Vec::as_slice);
            let classes: Vec<String> = letters
                .iter()
                .map(|r| header(r, "steadfast-error-class").unwrap_or_default())
                .collect();
            match exp {
                Expect::Apply { attempt, tier } => {
                    if times != 1 {
                        let by: Vec<String> = applied
                            .get(id.as_str())
                            .map(|es| es.iter().map(|e| format!("attempt {} by pid {}", e.attempt, e.pid)).collect())
                            .unwrap_or_default();
                        v.add(
                            "applied exactly once",
                            format!("{tag}: {id} (tiers passed: {tier}; delivered at partition {} offset {}) applied {times} times {by:?}, expected once{}", first_at.get(id.as_str()).map_or(-1, |a| a.0), first_at.get(id.as_str()).map_or(-1, |a| a.1), if letters.is_empty() { String::new() } else { format!("; dead-lettered as {classes:?}") }),
                        );
                    }
                    if let Some(e) = applied.get(id.as_str()).and_then(|es| es.first()) {
                        if e.attempt != *attempt as i32 {
                            v.add(
                                "attempts as expected",
                                format!("{tag}: {id} applied at attempt {}, expected {attempt}", e.attempt),
                            );
                        }
                    }
                    if !letters.is_empty() && times == 1 {
                        v.add(
                            "dead letters exactly as expected",
                            format!("{tag}: {id} was applied and also dead-lettered as {classes:?}"),
                        );
                    }
                }
                Expect::Never => {
                    if times > 0 {
                        v.add(
                            "applied exactly once",
                            format!("{tag}: {id} (stale) applied {times} times, expected never"),
                        );
                    }
                    if !letters.is_empty() {
                        v.add(
                            "dead letters exactly as expected",
                            format!("{tag}: {id} (stale) dead-lettered as {classes:?}"),
                        );
                    }
                }
                Expect::Dlq { class, attempts } => {
                    if times > 0 {
                        v.add(
                            "applied exactly once",
                            format!("{tag}: {id} (dead letter, class {class}) applied {times} times, expected never"),
                        );
                    }
                    check_letter(&mut v, &tag, id, letters, &[class], Some(*attempts));
                }
                Expect::DlqOrOvertaken { class, attempts } => {
                    if times > 0 {
                        v.add(
                            "applied exactly once",
                            format!("{tag}: {id} (dead letter, class {class} or overtaken) applied {times} times"),
                        );
                    }
                    let overtaken = classes.iter().any(|c| c == "overtaken");
                    check_letter(
                        &mut v,
                        &tag,
                        id,
                        letters,
                        &[class, "overtaken"],
                        (!overtaken).then_some(*attempts),
                    );
                }
                Expect::ApplyOrOvertaken { attempt, tier } => match (times, letters.len()) {
                    (1, 0) => {
                        let e = applied[id.as_str()][0];
                        if e.attempt != *attempt as i32 {
                            v.add(
                                "attempts as expected",
                                format!("{tag}: {id} applied at attempt {}, expected {attempt}", e.attempt),
                            );
                        }
                    }
                    (0, 1) => {
                        check_letter(&mut v, &tag, id, letters, &["overtaken"], None);
                        let (key, version) = version_of[id.as_str()];
                        if max_applied.get(key).is_none_or(|m| *m <= version) {
                            v.add(
                                "dead letters exactly as expected",
                                format!("{tag}: {id} (version {version} of {key}) dead-lettered as overtaken, but no newer version of {key} was applied"),
                            );
                        }
                    }
                    (0, 0) => v.add(
                        "applied exactly once",
                        format!("{tag}: {id} (relaxed, through tier {tier}) neither applied nor dead-lettered as overtaken: lost"),
                    ),
                    (t, d) => v.add(
                        "applied exactly once",
                        format!("{tag}: {id} (relaxed, through tier {tier}) applied {t} times and dead-lettered {d} times ({classes:?}); expected one of the two, once"),
                    ),
                },
            }
            // Provenance of every dead letter of this id.
            if let Some(&(partition, offset)) = first_at.get(id.as_str()) {
                for r in letters {
                    let want = [
                        ("steadfast-original-topic", topic.to_owned()),
                        ("steadfast-original-partition", partition.to_string()),
                        ("steadfast-original-offset", offset.to_string()),
                        ("steadfast-group", group.clone()),
                    ];
                    for (h, value) in want {
                        let got = header(r, h);
                        if got.as_deref() != Some(value.as_str()) {
                            v.add(
                                "dead-letter provenance headers",
                                format!("{tag}: dead letter of {id} (dlq partition {} offset {}): {h} = {got:?}, expected {value:?}", r.partition, r.offset),
                            );
                        }
                    }
                }
            }
        }
        for id in dead.keys() {
            if !expect.contains_key(id) {
                v.add(
                    "dead letters exactly as expected",
                    format!("{tag}: dead letter of unknown record {id}"),
                );
            }
        }
        for id in applied.keys() {
            if !expect.contains_key(*id) {
                v.add(
                    "applied exactly once",
                    format!("{tag}: unknown record {id} applied"),
                );
            }
        }

        // Per key: versions applied in increasing order (both modes: the version
        // compare-and-set), and in strict mode exactly the records that must apply, in
        // production order.
        let mut per_key: BTreeMap<&str, Vec<&Effect>> = BTreeMap::new();
        for e in &effects {
            per_key.entry(&e.key).or_default().push(e);
        }
        for (key, es) in &per_key {
            for w in es.windows(2) {
                if w[1].version <= w[0].version {
                    v.add(
                        "per-key versions applied in order",
                        format!(
                            "{tag}: {key}: version {} ({}) applied after version {} ({})",
                            w[1].version, w[1].id, w[0].version, w[0].id
                        ),
                    );
                }
            }
        }
        if plan.groups[g].strict {
            for (key, want) in plan.strict_order(g) {
                let got: Vec<(i64, String)> = per_key
                    .get(key.as_str())
                    .map(|es| es.iter().map(|e| (e.version, e.id.clone())).collect())
                    .unwrap_or_default();
                if got != want {
                    let at = got
                        .iter()
                        .zip(&want)
                        .position(|(a, b)| a != b)
                        .unwrap_or(got.len().min(want.len()));
                    v.add(
                        "strict per-key order",
                        format!(
                            "{tag}: {key}: applied (version, id) {:?} but strict order needs {:?} (first difference at position {at})",
                            got, want
                        ),
                    );
                }
            }
        }

        // Retry tiers: the group's own copies, each once, with the attempts so far.
        let a = plan.groups[g].attempts;
        for n in 1..=TIERS {
            let records = &obs.tiers[g][(n - 1) as usize];
            let want = plan.tier_ids(g, n);
            let mut seen: BTreeMap<String, usize> = BTreeMap::new();
            for r in records {
                let id = id_of(r);
                *seen.entry(id.clone()).or_default() += 1;
                let group_header = header(r, "steadfast-group");
                if group_header.as_deref() != Some(group.as_str()) {
                    v.add(
                        "retry tiers belong to their group",
                        format!(
                            "{tag}: tier {n} copy of {id} has steadfast-group {group_header:?}"
                        ),
                    );
                }
                let attempts = header(r, "steadfast-attempts");
                if attempts.as_deref() != Some((n * a).to_string().as_str()) {
                    v.add(
                        "attempts as expected",
                        format!("{tag}: tier {n} copy of {id}: steadfast-attempts {attempts:?}, expected {}", n * a),
                    );
                }
            }
            for (id, count) in &seen {
                if *count > 1 {
                    v.add(
                        "each routed record once",
                        format!("{tag}: {id} copied to tier {n} {count} times"),
                    );
                }
                if !want.contains(id) {
                    v.add(
                        "retry tiers hold exactly the expected records",
                        format!("{tag}: {id} in tier {n}, not expected there"),
                    );
                }
            }
            for id in &want {
                if seen.contains_key(id) {
                    continue;
                }
                let overtaken = dead.get(id).is_some_and(|ls| {
                    ls.iter()
                        .any(|r| header(r, "steadfast-error-class").as_deref() == Some("overtaken"))
                });
                if plan.groups[g].strict || !overtaken {
                    v.add(
                        "retry tiers hold exactly the expected records",
                        format!("{tag}: {id} never copied to tier {n}"),
                    );
                }
            }
        }

        // No two handler runs of one key overlap. A run without an end was cut by its
        // worker's death: it lasted until then.
        let mut runs: BTreeMap<&str, Vec<(i64, i64, &HandlerRun)>> = BTreeMap::new();
        for r in obs.runs.iter().filter(|r| &r.group == group) {
            let end = r
                .end
                .or_else(|| obs.deaths.get(&r.worker).copied().flatten())
                .unwrap_or(i64::MAX);
            runs.entry(&r.key).or_default().push((r.start, end, r));
        }
        for (key, mut rs) in runs {
            rs.sort_by_key(|(s, _, _)| *s);
            let mut latest: Option<(i64, &HandlerRun)> = None;
            for (start, end, r) in rs {
                if let Some((until, other)) = latest {
                    if start < until {
                        v.add(
                            "no overlapping runs of a key",
                            format!(
                                "{tag}: {key}: run of {} attempt {} on {} started at {:.3} s while the run of {} attempt {} on {} (started {:.3} s) lasted until {}",
                                r.id, r.attempt, r.worker, secs_since(origin, start),
                                other.id, other.attempt, other.worker, secs_since(origin, other.start),
                                if until == i64::MAX { "the end".to_owned() } else { format!("{:.3} s{}", secs_since(origin, until), if other.end.is_none() { " (its worker's death)" } else { "" }) }
                            ),
                        );
                    }
                }
                if latest.is_none_or(|(u, _)| end > u) {
                    latest = Some((end, r));
                }
            }
        }
    }
    // Dead letters of no group of this run.
    for r in &obs.dlq {
        let g = header(r, "steadfast-group");
        if !groups.iter().any(|x| Some(x) == g.as_ref()) {
            v.add(
                "dead letters exactly as expected",
                format!("dead letter of {} with steadfast-group {g:?}", id_of(r)),
            );
        }
    }
    v
}

/// Exactly one dead letter, of one of `classes`, with `attempts` when given.
fn check_letter(
    v: &mut Violations,
    tag: &str,
    id: &str,
    letters: &[&Received],
    classes: &[&str],
    attempts: Option<u32>,
) {
    if letters.len() != 1 {
        v.add(
            if letters.is_empty() {
                "dead letters exactly as expected"
            } else {
                "each routed record once"
            },
            format!(
                "{tag}: {id} dead-lettered {} times, expected once (class {})",
                letters.len(),
                classes.join(" or ")
            ),
        );
    }
    for r in letters {
        let class = header(r, "steadfast-error-class");
        if !classes.iter().any(|c| Some(*c) == class.as_deref()) {
            v.add(
                "dead letters exactly as expected",
                format!(
                    "{tag}: {id} dead-lettered with class {class:?}, expected {} ({:?})",
                    classes.join(" or "),
                    header(r, "steadfast-error-message")
                ),
            );
        }
        if let Some(want) = attempts {
            let got = header(r, "steadfast-attempts");
            if got.as_deref() != Some(want.to_string().as_str()) {
                v.add(
                    "attempts as expected",
                    format!(
                        "{tag}: dead letter of {id}: steadfast-attempts {got:?}, expected {want}"
                    ),
                );
            }
        }
    }
}
