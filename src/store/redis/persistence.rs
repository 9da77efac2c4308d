//! What a Redis keeps across its own restart, and what the stores lose when it keeps nothing.

use super::RedisStores;
use crate::store::StoreError;

/// A Redis's persistence settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Persistence {
    /// The append-only file is on (`appendonly yes`).
    pub aof: bool,
    /// Snapshots are scheduled (`save` is not empty).
    pub snapshots: bool,
}

impl Persistence {
    /// Whether anything the stores wrote survives a restart of the Redis.
    pub fn survives_restart(&self) -> bool {
        self.aof || self.snapshots
    }
}

impl RedisStores {
    /// Reads the Redis's persistence settings (`CONFIG GET appendonly` and `save`). Fails
    /// where `CONFIG` is not allowed (an ACL, a managed Redis), with the store's error.
    pub async fn persistence(&self) -> Result<Persistence, StoreError> {
        let mut conn = self.conn.clone();
        let appendonly: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("appendonly")
            .query_async(&mut conn)
            .await?;
        let save: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("save")
            .query_async(&mut conn)
            .await?;
        Ok(Persistence {
            aof: appendonly.get(1).is_some_and(|v| v == "yes"),
            snapshots: save.get(1).is_some_and(|v| !v.trim().is_empty()),
        })
    }

    /// The Redis process's run id (`INFO server`): a new one after every restart.
    pub async fn run_id(&self) -> Result<String, StoreError> {
        let mut conn = self.conn.clone();
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut conn)
            .await?;
        run_id_of(&info).ok_or_else(|| StoreError::failed("redis", "INFO server has no run_id"))
    }
}

/// The `run_id` field of an `INFO` reply.
fn run_id_of(info: &str) -> Option<String> {
    info.lines()
        .find_map(|line| line.trim().strip_prefix("run_id:"))
        .map(str::to_owned)
        .filter(|id| !id.is_empty())
}

/// What the stores of `roles` (`stale`, `lock`, `dedup`) lose when their Redis restarts
/// without persistence; `None` when it keeps its data or no role loses anything.
pub fn restart_loses(roles: &[&str], persistence: Persistence) -> Option<String> {
    if persistence.survives_restart() {
        return None;
    }
    let lost: Vec<&str> = roles
        .iter()
        .filter_map(|role| match *role {
            "dedup" => Some(
                "the completed message ids and the reservations (a redelivered message runs again, also beside a run still going)",
            ),
            "stale" => Some(
                "the applied versions (an older version delivered again is applied over a newer one)",
            ),
            "lock" => Some(
                "the leases (no key is granted until it has been up for a lease) and the fences (a holder whose lease ran out can write past them; tokens keep growing, seeded from the clock)",
            ),
            _ => None,
        })
        .collect();
    (!lost.is_empty()).then(|| lost.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redis_without_persistence_loses_what_each_role_keeps() {
        let none = Persistence {
            aof: false,
            snapshots: false,
        };
        let lost = restart_loses(&["dedup", "stale"], none).expect("something is lost");
        assert!(
            lost.contains("message ids") && lost.contains("versions"),
            "{lost}"
        );
        assert!(!lost.contains("fences"), "{lost}");
        let aof = Persistence {
            aof: true,
            snapshots: false,
        };
        assert_eq!(restart_loses(&["dedup", "stale", "lock"], aof), None);
        assert_eq!(
            restart_loses(&["rate"], none),
            None,
            "a rate limit loses nothing that matters"
        );
    }

    #[test]
    fn the_run_id_is_read_from_info_server() {
        let info = "# Server\r\nredis_version:7.0.15\r\nrun_id:4f1c0e5a9b\r\ntcp_port:6379\r\n";
        assert_eq!(run_id_of(info).as_deref(), Some("4f1c0e5a9b"));
        assert_eq!(run_id_of("# Server\r\nrun_id:\r\n"), None);
        assert_eq!(run_id_of("redis_version:7\r\n"), None);
    }
}
