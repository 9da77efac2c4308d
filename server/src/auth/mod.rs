//! Authentication and authorization: SASL (PLAIN, SCRAM-SHA-256/512) against a users file of
//! salted credentials, TLS listeners, and per-user topic and group rights.

pub(crate) mod crypto;
pub(crate) mod decoy;
pub(crate) mod plain;
pub(crate) mod rights;
pub(crate) mod scram;
pub(crate) mod session;
pub(crate) mod tls;
pub(crate) mod users;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;

use self::decoy::DecoySecret;
use self::rights::Access;
use self::users::{UsersError, UsersFile, ANONYMOUS};

/// What a request carries from its connection: who sent it and which address its listener
/// advertises.
#[derive(Debug)]
pub(crate) struct RequestContext {
    /// What the connection may do.
    pub(crate) access: Access,
    /// Host and port of the listener the request came through.
    pub(crate) advertised: (String, u16),
}

/// The users file as the server sees it, re-read when it changes on disk so that
/// `steadfast users add|remove` takes effect for new connections without a restart.
#[derive(Debug)]
pub(crate) struct UserDirectory {
    path: PathBuf,
    loaded: Mutex<Loaded>,
    /// What unknown users are answered with.
    decoy: Arc<DecoySecret>,
}

#[derive(Debug)]
struct Loaded {
    stamp: Option<(SystemTime, u64)>,
    users: Arc<UsersFile>,
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

impl UserDirectory {
    /// Loads the users file; a missing or invalid file is an error at start. Unknown users
    /// are answered with salts derived from `decoy`.
    pub(crate) fn open(path: &Path, decoy: DecoySecret) -> Result<Self, UsersError> {
        let stamp = stamp(path);
        let users = UsersFile::load(path)?;
        Ok(UserDirectory {
            path: path.to_owned(),
            loaded: Mutex::new(Loaded {
                stamp,
                users: Arc::new(users),
            }),
            decoy: Arc::new(decoy),
        })
    }

    /// The secret decoy salts and dummy verifications of unknown users come from.
    pub(crate) fn decoy(&self) -> &Arc<DecoySecret> {
        &self.decoy
    }

    /// The current users, re-read if the file changed. Blocking: call it off the async
    /// threads. A file that no longer parses is logged and the last good one kept.
    pub(crate) fn current(&self) -> Arc<UsersFile> {
        let now = stamp(&self.path);
        let mut loaded = self.loaded.lock();
        if now.is_some() && now != loaded.stamp {
            match UsersFile::load(&self.path) {
                Ok(users) => {
                    tracing::info!(path = %self.path.display(), users = users.users.len(), "users file reloaded");
                    loaded.users = Arc::new(users);
                }
                Err(e) => {
                    tracing::error!(error = %e, "users file changed but does not load; keeping the previous one")
                }
            }
            loaded.stamp = now;
        }
        loaded.users.clone()
    }

    /// The access of a user: its rights, or none if it is not in the file.
    pub(crate) fn access_of(&self, name: &str) -> Access {
        let rights = self
            .current()
            .users
            .get(name)
            .map(|u| u.rights.clone())
            .unwrap_or_default();
        Access::User {
            name: name.to_owned(),
            rights,
        }
    }

    /// The access of an unauthenticated connection on a listener without SASL: the rights
    /// of the `ANONYMOUS` entry, if the file has one.
    pub(crate) fn anonymous(&self) -> Access {
        self.access_of(ANONYMOUS)
    }
}
