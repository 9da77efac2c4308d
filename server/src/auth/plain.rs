//! SASL PLAIN (RFC 4616): `authzid NUL authcid NUL password`, checked against the user's
//! salted SCRAM credential, so no password or unsalted hash is ever stored.

use super::crypto::{constant_time_eq, Hash};
use super::decoy::DecoySecret;
use super::users::User;

/// A parsed PLAIN message. The password is not printed by `Debug`.
pub(crate) struct PlainMessage {
    pub(crate) user: String,
    password: String,
}

impl std::fmt::Debug for PlainMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlainMessage")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl PlainMessage {
    /// Parses a PLAIN message; the reason of a failure holds no secret.
    pub(crate) fn parse(message: &[u8]) -> Result<Self, &'static str> {
        let mut parts = message.split(|b| *b == 0);
        let (Some(authzid), Some(user), Some(password), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("PLAIN message is malformed");
        };
        let text = |bytes: &[u8]| String::from_utf8(bytes.to_vec()).map_err(|_| "not UTF-8");
        let (authzid, user, password) = (text(authzid)?, text(user)?, text(password)?);
        if user.is_empty() {
            return Err("PLAIN message has no user name");
        }
        if !authzid.is_empty() && authzid != user {
            return Err("authorization id differs from the user name");
        }
        Ok(PlainMessage { user, password })
    }

    /// Whether the password matches the user's credential (SHA-512's if it has one). An
    /// unknown user (`None`), or one without a usable credential, costs a dummy derivation of
    /// the same price, so that the answer's timing does not tell which users exist.
    pub(crate) fn verify(&self, user: Option<&User>, decoy: &DecoySecret) -> bool {
        let credential = user.and_then(|user| {
            [Hash::Sha512, Hash::Sha256]
                .into_iter()
                .find_map(|h| user.credential(h).map(|c| (h, c)))
        });
        let Some((hash, Ok(keys))) = credential.map(|(h, c)| (h, c.keys())) else {
            return decoy.dummy_verification(&self.user, &self.password);
        };
        let (stored_key, _) = hash.keys(self.password.as_bytes(), &keys.salt, keys.iterations);
        constant_time_eq(&stored_key, &keys.stored_key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::rights::Rights;

    #[test]
    fn the_right_password_verifies_and_a_wrong_one_does_not() {
        let decoy = DecoySecret::from_bytes([7; 32]);
        let user = User::with_password("pw-1", Rights::default()).unwrap();
        let verify = |message: &[u8], user: Option<&User>| {
            PlainMessage::parse(message).unwrap().verify(user, &decoy)
        };
        assert!(verify(b"\0alice\0pw-1", Some(&user)));
        assert!(verify(b"alice\0alice\0pw-1", Some(&user)));
        assert!(!verify(b"\0alice\0pw-2", Some(&user)));
        assert!(!verify(b"\0alice\0pw-1", Some(&User::default())));
        assert!(!verify(b"\0alice\0pw-1", None));
    }

    #[test]
    fn malformed_messages_are_refused_and_debug_hides_the_password() {
        assert!(PlainMessage::parse(b"alice\0pw").is_err());
        assert!(PlainMessage::parse(b"\0\0pw").is_err());
        assert!(PlainMessage::parse(b"bob\0alice\0pw").is_err());
        assert!(PlainMessage::parse(b"\0a\0b\0c").is_err());
        let message = PlainMessage::parse(b"\0alice\0hunter2").unwrap();
        assert!(!format!("{message:?}").contains("hunter2"));
    }
}
