//! Counting open connections, in all and per client IP address, so that a client (or many)
//! cannot open more than the configured limits: a connection over a limit is closed at
//! once, before any of its bytes is read.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Refusals are logged at most this often (with the count since the last line), so that a
/// flood of connections cannot flood the log as well.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// The open connections of a server, all listeners together.
#[derive(Debug)]
pub(crate) struct ConnectionSlots {
    max_total: usize,
    max_per_ip: usize,
    state: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
    /// Refusals not logged yet, and when the last refusal line was written.
    unlogged_refusals: u64,
    last_refusal_log: Option<Instant>,
}

/// Why a connection was refused a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SlotRefused {
    /// The server holds its maximum of connections.
    #[error("the server has its maximum of {0} connections open")]
    Total(usize),
    /// The client's address holds its maximum of connections.
    #[error("the client address has its maximum of {0} connections open")]
    PerIp(usize),
}

/// One open connection's place in the counts, given back when dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    slots: Arc<ConnectionSlots>,
    ip: IpAddr,
}

impl ConnectionSlots {
    /// Slots for at most `max_total` connections, `max_per_ip` of them from one address.
    pub(crate) fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(ConnectionSlots {
            max_total,
            max_per_ip,
            state: Mutex::new(Counts::default()),
        })
    }

    /// Takes a slot for a connection from `ip`, or says which limit it is over.
    pub(crate) fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, SlotRefused> {
        let mut counts = self.state.lock();
        if counts.total >= self.max_total {
            return Err(SlotRefused::Total(self.max_total));
        }
        let of_ip = counts.per_ip.entry(ip).or_insert(0);
        if *of_ip >= self.max_per_ip {
            return Err(SlotRefused::PerIp(self.max_per_ip));
        }
        *of_ip += 1;
        counts.total += 1;
        Ok(Slot {
            slots: self.clone(),
            ip,
        })
    }

    /// How many refusals to report in a log line now (`None`: too soon after the last
    /// line; the refusal is counted into the next one).
    pub(crate) fn refusals_to_log(&self) -> Option<u64> {
        let mut counts = self.state.lock();
        counts.unlogged_refusals += 1;
        let now = Instant::now();
        let due = counts
            .last_refusal_log
            .is_none_or(|last| now.duration_since(last) >= REFUSAL_LOG_INTERVAL);
        if !due {
            return None;
        }
        counts.last_refusal_log = Some(now);
        Some(std::mem::take(&mut counts.unlogged_refusals))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.slots.state.lock();
        counts.total = counts.total.saturating_sub(1);
        if let Some(of_ip) = counts.per_ip.get_mut(&self.ip) {
            *of_ip -= 1;
            if *of_ip == 0 {
                counts.per_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_hold_and_dropped_slots_are_given_back() {
        let slots = ConnectionSlots::new(3, 2);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let first = slots.acquire(a).expect("first from a");
        let _second = slots.acquire(a).expect("second from a");
        assert_eq!(slots.acquire(a).unwrap_err(), SlotRefused::PerIp(2));
        let _third = slots.acquire(b).expect("first from b");
        assert_eq!(slots.acquire(b).unwrap_err(), SlotRefused::Total(3));
        drop(first);
        let _again = slots.acquire(a).expect("a's slot was given back");
        assert!(slots.state.lock().per_ip.len() == 2);
    }
}
