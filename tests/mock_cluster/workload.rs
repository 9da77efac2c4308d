//! A seeded workload over the outcome classes (ok, transient `n` times, permanent, panic,
//! undecodable) and what must come of each record: applied once at a given attempt (through
//! tier `n` or none), or dead-lettered once with a class and an attempt count.
//!
//! A test may append held records: the last records of keys of their own, produced after
//! every other record, whose handler waits at a gate until the test opens it. They let a
//! test inject a fault at a moment it chooses (everything else finished, say) and know which
//! requests the held records make next.

// Items are `pub` for the test module beside, not for export.
#![allow(unreachable_pub)]

use std::collections::{BTreeMap, BTreeSet};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use steadfast::message::Json;
use steadfast::Message;

/// In-place attempts per delivery.
pub const ATTEMPTS: u32 = 2;
/// Retry tiers.
pub const TIERS: u32 = 2;
/// Handler attempts over the first delivery and every tier.
pub const TOTAL_ATTEMPTS: u32 = ATTEMPTS * (TIERS + 1);

/// What the handler does with a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "do", rename_all = "snake_case")]
pub enum Act {
    /// Applies its effect after sleeping `ms`.
    Ok { ms: u64 },
    /// Fails transiently on attempts `1..=n`, then applies.
    Fail { n: u32 },
    /// Fails permanently.
    Permanent,
    /// Panics.
    Panic,
}

/// The JSON payload of a decodable record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    pub id: String,
    pub key: String,
    /// Its place among its key's records, from 1.
    pub seq: u32,
    pub act: Act,
}

impl Message for Step {
    const TOPIC: &'static str = "mock-cluster";
    type Codec = Json;
    fn key(&self) -> Vec<u8> {
        self.key.as_bytes().to_vec()
    }
    fn id(&self) -> Option<String> {
        Some(self.id.clone())
    }
}

/// The payload prefix of records that do not decode (followed by the record's id).
pub const UNDECODABLE: &[u8] = b"\x00undecodable:";

/// One produced record.
#[derive(Debug, Clone)]
pub struct Planned {
    pub id: String,
    pub key: String,
    /// `None`: undecodable.
    pub step: Option<Step>,
    pub payload: Vec<u8>,
    /// The hold group that holds it, if any.
    pub held: Option<usize>,
}

/// What must come of one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Applied exactly once, at this attempt, having gone through tier `tier` (0: none).
    Apply { attempt: u32, tier: u32 },
    /// Dead-lettered exactly once with this class and attempt count, never applied.
    Dlq { class: &'static str, attempts: u32 },
}

/// The records of one test, in production order.
#[derive(Debug, Clone)]
pub struct Workload {
    pub seed: u64,
    pub records: Vec<Planned>,
    /// Hold groups: the ids of each.
    pub holds: Vec<Vec<String>>,
}

impl Workload {
    /// `count` records over `keys` keys, drawn from `seed`.
    pub fn new(seed: u64, count: usize, keys: usize) -> Workload {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut seqs = vec![0_u32; keys];
        let mut records = Vec::with_capacity(count);
        for i in 0..count {
            let k = rng.random_range(0..keys);
            let key = format!("k{k:02}");
            let id = format!("m{i}");
            let act = match rng.random_range(0..100) {
                0..=54 => Some(Act::Ok {
                    ms: rng.random_range(0..=4),
                }),
                55..=79 => Some(Act::Fail {
                    n: rng.random_range(1..=TOTAL_ATTEMPTS),
                }),
                80..=85 => Some(Act::Permanent),
                86..=91 => Some(Act::Panic),
                _ => None,
            };
            seqs[k] += 1;
            records.push(planned(id, key, seqs[k], act, None));
        }
        Workload {
            seed,
            records,
            holds: Vec::new(),
        }
    }

    /// Appends a hold group: one record doing `act` on each of `keys` keys of its own, after
    /// every record so far; returns the group's index.
    pub fn hold(&mut self, keys: usize, act: &Act) -> usize {
        let group = self.holds.len();
        let mut ids = Vec::with_capacity(keys);
        for k in 0..keys {
            let key = format!("held{group}-{k}");
            let id = format!("h{group}-{k}");
            ids.push(id.clone());
            self.records
                .push(planned(id, key, 1, Some(act.clone()), Some(group)));
        }
        self.holds.push(ids);
        group
    }

    /// Key and payload of every record, in production order.
    pub fn produced(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.records
            .iter()
            .map(|r| (r.key.as_bytes().to_vec(), r.payload.clone()))
            .collect()
    }

    /// What must come of every record.
    pub fn expectations(&self) -> BTreeMap<String, Expect> {
        self.records
            .iter()
            .map(|r| (r.id.clone(), expect(r.step.as_ref())))
            .collect()
    }

    /// The ids whose copy must go to tier `n` (each once).
    pub fn tier_ids(&self, n: u32) -> BTreeSet<String> {
        self.records
            .iter()
            .filter_map(|r| r.step.as_ref())
            .filter(|s| matches!(s.act, Act::Fail { n: f } if f >= n * ATTEMPTS))
            .map(|s| s.id.clone())
            .collect()
    }

    /// Per key, the ids that must apply, in production order (strict ordering).
    pub fn applied_order(&self) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for r in &self.records {
            if matches!(expect(r.step.as_ref()), Expect::Apply { .. }) {
                out.entry(r.key.clone()).or_default().push(r.id.clone());
            }
        }
        out
    }

    /// One line: sizes and the outcome mix.
    pub fn describe(&self) -> String {
        let mut mix: BTreeMap<&str, usize> = BTreeMap::new();
        for r in &self.records {
            let name = match r.step.as_ref().map(|s| &s.act) {
                None => "undecodable",
                Some(Act::Ok { .. }) => "ok",
                Some(Act::Fail { n }) if *n < ATTEMPTS => "transient (in place)",
                Some(Act::Fail { n }) if *n < TOTAL_ATTEMPTS => "transient (through a tier)",
                Some(Act::Fail { .. }) => "transient (to the DLQ)",
                Some(Act::Permanent) => "permanent",
                Some(Act::Panic) => "panic",
            };
            *mix.entry(name).or_default() += 1;
        }
        let held: usize = self.holds.iter().map(Vec::len).sum();
        format!(
            "seed {}: {} records ({held} held), mix {mix:?}",
            self.seed,
            self.records.len()
        )
    }
}

fn planned(id: String, key: String, seq: u32, act: Option<Act>, held: Option<usize>) -> Planned {
    match act {
        Some(act) => {
            let step = Step {
                id: id.clone(),
                key: key.clone(),
                seq,
                act,
            };
            Planned {
                payload: serde_json::to_vec(&step).expect("encodes"),
                id,
                key,
                step: Some(step),
                held,
            }
        }
        None => {
            let mut payload = UNDECODABLE.to_vec();
            payload.extend_from_slice(id.as_bytes());
            Planned {
                id,
                key,
                step: None,
                payload,
                held,
            }
        }
    }
}

fn expect(step: Option<&Step>) -> Expect {
    let Some(step) = step else {
        return Expect::Dlq {
            class: "decode",
            attempts: 1,
        };
    };
    match step.act {
        Act::Ok { .. } => Expect::Apply {
            attempt: 1,
            tier: 0,
        },
        Act::Permanent => Expect::Dlq {
            class: "permanent",
            attempts: 1,
        },
        Act::Panic => Expect::Dlq {
            class: "panic",
            attempts: 1,
        },
        Act::Fail { n } if n < TOTAL_ATTEMPTS => Expect::Apply {
            attempt: n + 1,
            tier: n / ATTEMPTS,
        },
        Act::Fail { .. } => Expect::Dlq {
            class: "transient",
            attempts: TOTAL_ATTEMPTS,
        },
    }
}

/// The record id of a copy: from its JSON, or after the undecodable prefix.
pub fn id_of(payload: &[u8]) -> String {
    if let Some(id) = payload.strip_prefix(UNDECODABLE) {
        return String::from_utf8_lossy(id).into_owned();
    }
    serde_json::from_slice::<Step>(payload).map_or_else(
        |_| format!("<unreadable {:?}>", String::from_utf8_lossy(payload)),
        |s| s.id,
    )
}
