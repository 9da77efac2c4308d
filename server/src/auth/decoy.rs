//! What an unknown user is answered with, so that a client cannot tell an unknown user from
//! a known one with a wrong password: SCRAM salts derived from a server secret kept in the
//! data directory (the same salt for a name across restarts, as a real user's is), and for
//! PLAIN a dummy key derivation as costly as checking a real password.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::crypto::{constant_time_eq, random_bytes, Hash, RandomUnavailable, SALT_LEN};
use super::users::{CredentialKeys, DEFAULT_ITERATIONS};
use crate::error::ServerError;

/// The secret's file in the data directory (mode 0600).
pub(crate) const SECRET_FILE: &str = "sasl-decoy.secret";

/// Length of the secret in bytes.
const SECRET_LEN: usize = 32;

/// Why the decoy secret could not be read or created.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DecoyError {
    /// Reading or writing the secret's file failed.
    #[error("decoy secret {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file does not hold a secret of the right length.
    #[error(
        "decoy secret {path} holds {len} bytes, not {SECRET_LEN}: delete it to make a new one"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: usize,
    },
    /// No random secret could be made.
    #[error(transparent)]
    Random(#[from] RandomUnavailable),
}

impl From<DecoyError> for ServerError {
    fn from(e: DecoyError) -> Self {
        match e {
            DecoyError::Io { path, source } => ServerError::Storage { path, source },
            DecoyError::Corrupt { ref path, .. } => ServerError::InvalidMetadata {
                path: path.clone(),
                reason: e.to_string(),
            },
            DecoyError::Random(e) => ServerError::Config(e.to_string()),
        }
    }
}

/// The server secret decoy salts are derived from. `Debug` does not print it.
pub(crate) struct DecoySecret {
    key: [u8; SECRET_LEN],
}

impl std::fmt::Debug for DecoySecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecoySecret").finish_non_exhaustive()
    }
}

impl DecoySecret {
    /// Reads the secret from `data_dir`, or makes one and stores it there (mode 0600,
    /// fsynced) on first start. The data directory's lock makes this server its only writer.
    pub(crate) fn load_or_create(data_dir: &Path) -> Result<Self, DecoyError> {
        let path = data_dir.join(SECRET_FILE);
        let io = |source| DecoyError::Io {
            path: path.clone(),
            source,
        };
        match std::fs::read(&path) {
            Ok(bytes) => {
                let len = bytes.len();
                let key = bytes.try_into().map_err(|_| DecoyError::Corrupt {
                    path: path.clone(),
                    len,
                })?;
                return Ok(DecoySecret { key });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        let fresh = random_bytes(SECRET_LEN)?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".sasl-decoy")
            .tempfile_in(data_dir)
            .map_err(io)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            tmp.as_file()
                .set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(io)?;
        }
        tmp.write_all(&fresh).map_err(io)?;
        tmp.as_file().sync_all().map_err(io)?;
        tmp.persist(&path).map_err(|e| io(e.error))?;
        crate::durable::sync_dir(data_dir).map_err(io)?;
        tracing::info!(path = %path.display(), "created the SASL decoy secret");
        let key = fresh
            .try_into()
            .map_err(|_| DecoyError::Corrupt { path, len: 0 })?;
        Ok(DecoySecret { key })
    }

    /// A secret from fixed bytes, for tests and the fuzz targets.
    pub(crate) fn from_bytes(key: [u8; SECRET_LEN]) -> Self {
        DecoySecret { key }
    }

    /// The decoy salt of `user` for `hash`: HMAC-SHA-256 of the mechanism and the name under
    /// the secret, as long as a real salt. Different per mechanism, as a real user's salts
    /// are.
    pub(crate) fn salt(&self, hash: Hash, user: &str) -> Vec<u8> {
        let label: &[u8] = match hash {
            Hash::Sha256 => b"SCRAM-SHA-256\0",
            Hash::Sha512 => b"SCRAM-SHA-512\0",
        };
        let mut salt = Hash::Sha256.hmac(&self.key, &[label, user.as_bytes()].concat());
        salt.truncate(SALT_LEN);
        salt
    }

    /// SCRAM keys for an unknown user: the decoy salt, the default iteration count, and
    /// random keys no proof can match.
    pub(crate) fn scram_keys(
        &self,
        hash: Hash,
        user: &str,
    ) -> Result<CredentialKeys, RandomUnavailable> {
        Ok(CredentialKeys {
            salt: self.salt(hash, user),
            iterations: DEFAULT_ITERATIONS,
            stored_key: random_bytes(hash.len())?,
            server_key: random_bytes(hash.len())?,
        })
    }

    /// Checks `password` against a credential no password matches, at the cost of checking
    /// a real SCRAM-SHA-512 credential of the default iteration count (what a PLAIN login of
    /// a known user costs). Always false.
    pub(crate) fn dummy_verification(&self, user: &str, password: &str) -> bool {
        let salt = self.salt(Hash::Sha512, user);
        let (stored_key, _) = Hash::Sha512.keys(password.as_bytes(), &salt, DEFAULT_ITERATIONS);
        // All zeros: a stored key no password derives to (short of breaking SHA-512).
        let unmatchable = [0u8; 64];
        let matched = constant_time_eq(std::hint::black_box(&stored_key), &unmatchable);
        std::hint::black_box(matched);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_secret_gives_the_same_salts_after_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let first = DecoySecret::load_or_create(dir.path()).unwrap();
        let again = DecoySecret::load_or_create(dir.path()).unwrap();
        assert_eq!(
            first.salt(Hash::Sha512, "nobody"),
            again.salt(Hash::Sha512, "nobody")
        );
        assert_ne!(
            first.salt(Hash::Sha512, "nobody"),
            first.salt(Hash::Sha512, "somebody")
        );
        assert_ne!(
            first.salt(Hash::Sha512, "nobody"),
            first.salt(Hash::Sha256, "nobody")
        );
        assert_eq!(first.salt(Hash::Sha256, "nobody").len(), SALT_LEN);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(SECRET_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_secret_of_the_wrong_length_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(SECRET_FILE), b"short").unwrap();
        let err = DecoySecret::load_or_create(dir.path()).unwrap_err();
        assert!(matches!(err, DecoyError::Corrupt { len: 5, .. }), "{err}");
    }
}
