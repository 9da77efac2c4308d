//! Shared by the benchmarks that write to the suite's Redis: deleting a run's keys.

use anyhow::Context as _;

/// Deletes every key under `prefix:` in the Redis at `url`; the number deleted (blocking).
pub(crate) fn delete_under(url: &str, prefix: &str) -> anyhow::Result<u64> {
    let mut con = redis::Client::open(url)?
        .get_connection()
        .context("Redis on 127.0.0.1:6379 (scripts/services.sh)")?;
    let pattern = format!("{prefix}:*");
    let mut deleted = 0;
    // Deleting while scanning can make SCAN skip keys: go again until a pass finds none.
    loop {
        let mut found = 0;
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1_000)
                .query(&mut con)?;
            if !keys.is_empty() {
                found += keys.len() as u64;
                let n: u64 = redis::cmd("UNLINK").arg(&keys).query(&mut con)?;
                deleted += n;
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        if found == 0 {
            return Ok(deleted);
        }
    }
}
