//! Where a delayed record waits: the bucket topics of a topic and the rule that picks one.
//!
//! Bucket `n` (1 to [`BUCKETS`]) of topic `T` is `T.delay.<n>`. A record enters the bucket
//! of the largest hop not longer than the time it has left, and its hop is due that long
//! after it entered (or at its delivery time, if that is sooner). Every record of a bucket
//! entered with the same hop, so a partition's records are due in the order they were
//! written: the relay reads a partition front to back and never holds a due record behind
//! one that is not. At its hop the record moves on to a shorter bucket or, with less than
//! the shortest hop left, waits in the relay's memory until its delivery time.

/// How many bucket topics a topic has.
pub const BUCKETS: u32 = 9;

/// The shortest hop (bucket 1), in ms; each bucket's hop is four times the one before, up to
/// 4^8 s (about 18 hours) for bucket 9.
pub const SHORTEST_HOP_MS: i64 = 1_000;

/// The bucket topic `n` of `topic`.
pub fn bucket_topic(topic: &str, n: u32) -> String {
    format!("{topic}.delay.{n}")
}

/// Every bucket topic of `topic`, bucket 1 first.
pub fn bucket_topics(topic: &str) -> Vec<String> {
    (1..=BUCKETS).map(|n| bucket_topic(topic, n)).collect()
}

/// The hop of bucket `n`, in ms.
pub(crate) fn hop_ms(n: u32) -> i64 {
    SHORTEST_HOP_MS << (2 * (n.clamp(1, BUCKETS) - 1))
}

/// Where a record due at `deliver_at_ms` goes at `now_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placement {
    /// It is due: to its topic.
    Deliver,
    /// Less than the shortest hop left: held in memory until it is due (for the producer:
    /// bucket 1, its hop at its delivery time).
    Hold,
    /// To bucket `bucket`, its hop due at `hop_at_ms`.
    Bucket {
        /// The bucket (1-based).
        bucket: u32,
        /// When its hop is due, in ms since the epoch.
        hop_at_ms: i64,
    },
}

/// Where a record due at `deliver_at_ms` goes at `now_ms`.
pub(crate) fn place(deliver_at_ms: i64, now_ms: i64) -> Placement {
    let left = deliver_at_ms - now_ms;
    if left <= 0 {
        return Placement::Deliver;
    }
    if left < SHORTEST_HOP_MS {
        return Placement::Hold;
    }
    let bucket = (1..=BUCKETS)
        .rev()
        .find(|&n| hop_ms(n) <= left)
        .unwrap_or(1);
    Placement::Bucket {
        bucket,
        hop_at_ms: now_ms + hop_ms(bucket),
    }
}

/// The bucket `topic` is of `source`'s buckets (1-based), if it is one.
pub(crate) fn bucket_of(source: &str, topic: &str) -> Option<u32> {
    let n: u32 = topic
        .strip_prefix(source)?
        .strip_prefix(".delay.")?
        .parse()
        .ok()?;
    (1..=BUCKETS).contains(&n).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hops_grow_fourfold_from_one_second() {
        let hops: Vec<i64> = (1..=BUCKETS).map(hop_ms).collect();
        assert_eq!(hops[0], 1_000);
        assert_eq!(hops[1], 4_000);
        assert_eq!(hops[8], 65_536_000);
    }

    #[test]
    fn a_record_enters_the_bucket_of_the_longest_hop_it_has_time_for() {
        let now = 1_000_000;
        assert_eq!(place(now, now), Placement::Deliver);
        assert_eq!(place(now - 5, now), Placement::Deliver);
        assert_eq!(place(now + 999, now), Placement::Hold);
        for (left, bucket) in [
            (1_000, 1),
            (3_999, 1),
            (4_000, 2),
            (15_999, 2),
            (16_000, 3),
            (30_000, 3),
            (86_400_000 * 30, 9),
        ] {
            assert_eq!(
                place(now + left, now),
                Placement::Bucket {
                    bucket,
                    hop_at_ms: now + hop_ms(bucket)
                },
                "{left} ms left"
            );
        }
    }

    #[test]
    fn a_hop_never_passes_the_delivery_time() {
        let now = 5_000;
        for left in (1_000..200_000).step_by(997) {
            if let Placement::Bucket { hop_at_ms, .. } = place(now + left, now) {
                assert!(hop_at_ms <= now + left, "{left}");
                assert!(hop_at_ms > now);
            }
        }
    }

    #[test]
    fn bucket_topics_are_recognised_by_name() {
        assert_eq!(bucket_topic("orders", 3), "orders.delay.3");
        assert_eq!(bucket_of("orders", "orders.delay.3"), Some(3));
        assert_eq!(bucket_of("orders", "orders.delay.10"), None);
        assert_eq!(bucket_of("orders", "orders.delay.0"), None);
        assert_eq!(bucket_of("orders", "orders.retry.1"), None);
        assert_eq!(bucket_of("orders", "other.delay.1"), None);
        assert_eq!(bucket_topics("t").len(), BUCKETS as usize);
    }
}
