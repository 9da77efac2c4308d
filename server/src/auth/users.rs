//! The users file: per user, salted SCRAM credentials (never a password) and rights.
//! Read by the server, written by `steadfast users`.
//!
//! ```toml
//! [users.alice.scram_sha_512]
//! salt = "…"            # base64
//! iterations = 4096
//! stored_key = "…"      # base64 of H(HMAC(SaltedPassword, "Client Key"))
//! server_key = "…"      # base64 of HMAC(SaltedPassword, "Server Key")
//!
//! [users.alice.rights]
//! read_topics = ["orders."]
//! groups = ["billing-"]
//! ```

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};

use super::crypto::{Hash, SALT_LEN};
use super::rights::Rights;

/// Default PBKDF2 iteration count of new credentials (Kafka's minimum for SCRAM).
pub const DEFAULT_ITERATIONS: u32 = 4096;

/// The user name that connections on a listener without SASL act as.
pub const ANONYMOUS: &str = "ANONYMOUS";

/// Why the users file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// Reading or writing the file failed.
    #[error("users file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a valid users file.
    #[error("users file {path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the key.
        reason: String,
    },
    /// No random salt could be made.
    #[error(transparent)]
    Random(#[from] super::crypto::RandomUnavailable),
    /// A user name that cannot be used.
    #[error("user name `{0}` is not allowed: use 1 to 255 characters, no control characters")]
    BadName(String),
}

/// A salted SCRAM credential: enough to check a SCRAM proof or a PLAIN password, not enough
/// to recover the password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScramCredential {
    /// The salt, base64.
    pub salt: String,
    /// PBKDF2 iterations.
    pub iterations: u32,
    /// `H(ClientKey)`, base64.
    pub stored_key: String,
    /// `ServerKey`, base64.
    pub server_key: String,
}

/// The decoded bytes of a credential.
#[derive(Debug, Clone)]
pub(crate) struct CredentialKeys {
    pub(crate) salt: Vec<u8>,
    pub(crate) iterations: u32,
    pub(crate) stored_key: Vec<u8>,
    pub(crate) server_key: Vec<u8>,
}

impl ScramCredential {
    /// Derives a credential for `password` with a fresh random salt.
    pub fn new(hash: Hash, password: &str, iterations: u32) -> Result<Self, UsersError> {
        let salt = super::crypto::random_bytes(SALT_LEN)?;
        let (stored_key, server_key) = hash.keys(password.as_bytes(), &salt, iterations);
        Ok(ScramCredential {
            salt: B64.encode(&salt),
            iterations,
            stored_key: B64.encode(stored_key),
            server_key: B64.encode(server_key),
        })
    }

    pub(crate) fn keys(&self) -> Result<CredentialKeys, String> {
        let decode = |field: &str, value: &str| {
            B64.decode(value)
                .map_err(|e| format!("{field} is not base64: {e}"))
        };
        if self.iterations == 0 {
            return Err("iterations must be at least 1".to_owned());
        }
        Ok(CredentialKeys {
            salt: decode("salt", &self.salt)?,
            iterations: self.iterations,
            stored_key: decode("stored_key", &self.stored_key)?,
            server_key: decode("server_key", &self.server_key)?,
        })
    }
}

/// One user: credentials (none for a certificate-only or `ANONYMOUS` entry) and rights.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// SCRAM-SHA-256 credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scram_sha_256: Option<ScramCredential>,
    /// SCRAM-SHA-512 credential; PLAIN passwords are checked against it (or SHA-256's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scram_sha_512: Option<ScramCredential>,
    /// What the user may do.
    #[serde(default)]
    pub rights: Rights,
}

impl User {
    /// A user with both SCRAM credentials for `password`.
    pub fn with_password(password: &str, rights: Rights) -> Result<Self, UsersError> {
        Ok(User {
            scram_sha_256: Some(ScramCredential::new(
                Hash::Sha256,
                password,
                DEFAULT_ITERATIONS,
            )?),
            scram_sha_512: Some(ScramCredential::new(
                Hash::Sha512,
                password,
                DEFAULT_ITERATIONS,
            )?),
            rights,
        })
    }

    /// The credential for a SCRAM hash, if the user has one.
    pub(crate) fn credential(&self, hash: Hash) -> Option<&ScramCredential> {
        match hash {
            Hash::Sha256 => self.scram_sha_256.as_ref(),
            Hash::Sha512 => self.scram_sha_512.as_ref(),
        }
    }

    /// The mechanisms this user can authenticate with.
    pub fn mechanisms(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.scram_sha_256.is_some() || self.scram_sha_512.is_some() {
            out.push("PLAIN");
        }
        if self.scram_sha_256.is_some() {
            out.push("SCRAM-SHA-256");
        }
        if self.scram_sha_512.is_some() {
            out.push("SCRAM-SHA-512");
        }
        out
    }
}

/// The whole users file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsersFile {
    /// Users by name.
    #[serde(default)]
    pub users: BTreeMap<String, User>,
}

/// Checks that a user name can be stored and used in SASL.
pub fn check_name(name: &str) -> Result<(), UsersError> {
    if name.is_empty() || name.len() > 255 || name.chars().any(char::is_control) {
        return Err(UsersError::BadName(name.to_owned()));
    }
    Ok(())
}

impl UsersFile {
    /// Reads and validates a users file.
    pub fn load(path: &Path) -> Result<Self, UsersError> {
        let raw = std::fs::read_to_string(path).map_err(|source| UsersError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &raw)
    }

    /// Reads a users file, or an empty one if it does not exist yet.
    pub fn load_or_empty(path: &Path) -> Result<Self, UsersError> {
        match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(UsersFile::default()),
            _ => Self::load(path),
        }
    }

    fn parse(path: &Path, raw: &str) -> Result<Self, UsersError> {
        let invalid = |reason: String| UsersError::Invalid {
            path: path.to_owned(),
            reason,
        };
        let file: UsersFile = toml::from_str(raw).map_err(|e| invalid(e.to_string()))?;
        for (name, user) in &file.users {
            check_name(name).map_err(|e| invalid(e.to_string()))?;
            for (key, credential) in [
                ("scram_sha_256", &user.scram_sha_256),
                ("scram_sha_512", &user.scram_sha_512),
            ] {
                if let Some(credential) = credential {
                    credential
                        .keys()
                        .map_err(|e| invalid(format!("users.{name}.{key}: {e}")))?;
                }
            }
        }
        Ok(file)
    }

    /// Writes the file atomically (a temporary file renamed over it), readable by its owner
    /// only.
    pub fn save(&self, path: &Path) -> Result<(), UsersError> {
        let io = |source| UsersError::Io {
            path: path.to_owned(),
            source,
        };
        let body = toml::to_string_pretty(self).map_err(|e| UsersError::Invalid {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        let mut tmp = tempfile::NamedTempFile::new_in(&dir).map_err(io)?;
        tmp.write_all(b"# steadfast users: salted SCRAM credentials and rights.\n# Manage with `steadfast users add|remove|list`; no password is stored.\n\n")
            .map_err(io)?;
        tmp.write_all(body.as_bytes()).map_err(io)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            tmp.as_file()
                .set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(io)?;
        }
        tmp.as_file().sync_all().map_err(io)?;
        tmp.persist(path).map_err(|e| io(e.error))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_file_holds_no_password_and_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        let mut file = UsersFile::default();
        let rights = Rights {
            read_topics: vec!["orders.".into()],
            ..Rights::default()
        };
        file.users.insert(
            "alice".into(),
            User::with_password("s3cret-pass", rights.clone()).unwrap(),
        );
        file.save(&path).unwrap();
        let raw = std::fs::read_to_string(&path).unwrap();
        assert!(!raw.contains("s3cret-pass"));
        assert!(raw.contains("stored_key"));
        let loaded = UsersFile::load(&path).unwrap();
        assert_eq!(loaded, file);
        assert_eq!(loaded.users["alice"].rights, rights);
    }

    #[test]
    fn a_bad_file_names_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        std::fs::write(
            &path,
            "[users.bob.scram_sha_512]\nsalt = \"!!\"\niterations = 4096\nstored_key = \"\"\nserver_key = \"\"\n",
        )
        .unwrap();
        let err = UsersFile::load(&path).unwrap_err().to_string();
        assert!(err.contains("users.bob.scram_sha_512: salt"), "{err}");
        std::fs::write(&path, "[users.bob.rights]\nread = [\"x\"]\n").unwrap();
        let err = UsersFile::load(&path).unwrap_err().to_string();
        assert!(err.contains("read"), "{err}");
    }
}
