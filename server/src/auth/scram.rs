//! The server side of a SCRAM exchange (RFC 5802, RFC 7677): client-first → server-first,
//! client-final → server-final. Pure: the credential lookup and the server nonce are given.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

use super::crypto::{constant_time_eq, Hash};
use super::decoy::DecoySecret;
use super::users::CredentialKeys;

/// What one step of an exchange gives back.
#[derive(Debug)]
pub(crate) enum Step {
    /// Send this to the client and wait for its next message.
    Challenge(Vec<u8>),
    /// The client proved it knows the password: send the server-final message.
    Success {
        /// The authenticated user.
        user: String,
        /// `v=<server signature>`.
        server_final: Vec<u8>,
    },
    /// Authentication failed. The reason is for the log; it never holds a secret.
    Failure {
        /// The user the client claimed to be, when it got that far.
        user: Option<String>,
        /// Why.
        reason: String,
    },
}

/// What the server remembers between client-first and client-final.
#[derive(Debug)]
struct Expecting {
    user: String,
    known: bool,
    keys: CredentialKeys,
    gs2_header: String,
    client_first_bare: String,
    server_first: String,
    /// The client's nonce and the server's, as the server-first message gave them.
    nonce: String,
    /// The client's nonce alone.
    client_nonce: String,
}

#[derive(Debug)]
enum State {
    First,
    Final(Box<Expecting>),
    Done,
}

/// One SCRAM exchange on one connection.
#[derive(Debug)]
pub(crate) struct ScramExchange {
    hash: Hash,
    state: State,
    /// Where the salt of an unknown user comes from: the same salt for a name every time, so
    /// a client cannot tell an unknown user from a wrong password.
    decoy: Arc<DecoySecret>,
}

fn failure(user: Option<&str>, reason: impl Into<String>) -> Step {
    Step::Failure {
        user: user.map(str::to_owned),
        reason: reason.into(),
    }
}

/// Decodes a SCRAM `saslname` (`=2C` is `,`, `=3D` is `=`).
fn decode_saslname(raw: &str) -> Option<String> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(at) = rest.find('=') {
        out.push_str(&rest[..at]);
        let code = rest.get(at + 1..at + 3)?;
        out.push(match code {
            "2C" => ',',
            "3D" => '=',
            _ => return None,
        });
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Some(out)
}

impl ScramExchange {
    /// A new exchange for SCRAM over `hash`; unknown users get salts from `decoy`.
    pub(crate) fn new(hash: Hash, decoy: Arc<DecoySecret>) -> Self {
        ScramExchange {
            hash,
            state: State::First,
            decoy,
        }
    }

    /// The hash of this exchange's mechanism.
    pub(crate) fn hash(&self) -> Hash {
        self.hash
    }

    /// Takes the client's next message. `lookup` finds a user's credential;
    /// `server_nonce` is appended to the client's nonce.
    pub(crate) fn step(
        &mut self,
        message: &[u8],
        lookup: impl FnOnce(&str) -> Option<CredentialKeys>,
        server_nonce: &str,
    ) -> Step {
        let Ok(message) = std::str::from_utf8(message) else {
            self.state = State::Done;
            return failure(None, "message is not UTF-8");
        };
        match std::mem::replace(&mut self.state, State::Done) {
            State::First => self.client_first(message, lookup, server_nonce),
            State::Final(expected) => self.client_final(message, &expected),
            State::Done => failure(None, "the exchange is already over"),
        }
    }

    fn client_first(
        &mut self,
        message: &str,
        lookup: impl FnOnce(&str) -> Option<CredentialKeys>,
        server_nonce: &str,
    ) -> Step {
        let mut parts = message.splitn(3, ',');
        let (Some(flag), Some(authzid), Some(bare)) = (parts.next(), parts.next(), parts.next())
        else {
            return failure(None, "client-first message is malformed");
        };
        match flag {
            "n" | "y" => {}
            f if f.starts_with("p=") => return failure(None, "channel binding is not supported"),
            _ => return failure(None, "client-first message has a bad GS2 flag"),
        }
        let mut user = None;
        let mut client_nonce = None;
        for (i, attribute) in bare.split(',').enumerate() {
            match (i, attribute.split_at_checked(2)) {
                (0, Some(("n=", name))) => user = decode_saslname(name),
                (1, Some(("r=", nonce))) => client_nonce = Some(nonce),
                (0, Some(("m=", _))) => {
                    return failure(None, "mandatory extensions are not supported")
                }
                _ => {}
            }
        }
        let (Some(user), Some(client_nonce)) = (user, client_nonce) else {
            return failure(None, "client-first message lacks a user name or nonce");
        };
        if client_nonce.is_empty() {
            return failure(Some(&user), "empty client nonce");
        }
        if let Some(authzid) = authzid.strip_prefix("a=") {
            if decode_saslname(authzid).as_deref() != Some(user.as_str()) {
                return failure(Some(&user), "authorization id differs from the user name");
            }
        } else if !authzid.is_empty() {
            return failure(
                Some(&user),
                "client-first message has a bad authorization id",
            );
        }
        let (known, keys) = match lookup(&user) {
            Some(keys) => (true, keys),
            None => match self.decoy.scram_keys(self.hash, &user) {
                Ok(keys) => (false, keys),
                Err(_) => return failure(Some(&user), "no random bytes for the exchange"),
            },
        };
        let nonce = format!("{client_nonce}{server_nonce}");
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&keys.salt),
            keys.iterations
        );
        let challenge = server_first.clone().into_bytes();
        self.state = State::Final(Box::new(Expecting {
            user,
            known,
            keys,
            gs2_header: format!("{flag},{authzid},"),
            client_first_bare: bare.to_owned(),
            server_first,
            nonce,
            client_nonce: client_nonce.to_owned(),
        }));
        Step::Challenge(challenge)
    }

    fn client_final(&self, message: &str, expected: &Expecting) -> Step {
        let user = Some(expected.user.as_str());
        let Some((without_proof, proof)) = message.rsplit_once(",p=") else {
            return failure(user, "client-final message lacks a proof");
        };
        let mut attributes = without_proof.split(',');
        let binding = attributes.next().and_then(|a| a.strip_prefix("c="));
        let nonce = attributes.next().and_then(|a| a.strip_prefix("r="));
        if binding.and_then(|b| B64.decode(b).ok()).as_deref()
            != Some(expected.gs2_header.as_bytes())
        {
            return failure(user, "channel binding data differs from the GS2 header");
        }
        // librdkafka before 2.6.1 (Debian's kcat, say) sends its own nonce once more in front
        // of the server's (which already starts with it); Kafka accepted that until 4.0. That
        // exact form is accepted too: it still holds the server's nonce in full, so it answers
        // this exchange's challenge and no other.
        let accepted = nonce == Some(expected.nonce.as_str())
            || nonce.and_then(|n| n.strip_prefix(expected.client_nonce.as_str()))
                == Some(expected.nonce.as_str());
        if !accepted {
            return failure(user, "nonce differs from the server's");
        }
        let Ok(proof) = B64.decode(proof) else {
            return failure(user, "proof is not base64");
        };
        let hash = self.hash;
        let auth_message = format!(
            "{},{},{}",
            expected.client_first_bare, expected.server_first, without_proof
        );
        let client_signature = hash.hmac(&expected.keys.stored_key, auth_message.as_bytes());
        if proof.len() != client_signature.len() {
            return failure(user, "invalid credentials");
        }
        let client_key: Vec<u8> = proof
            .iter()
            .zip(&client_signature)
            .map(|(p, s)| p ^ s)
            .collect();
        if !constant_time_eq(&hash.hash(&client_key), &expected.keys.stored_key) || !expected.known
        {
            let reason = if expected.known {
                "invalid credentials"
            } else {
                "unknown user"
            };
            return failure(user, reason);
        }
        let server_signature = hash.hmac(&expected.keys.server_key, auth_message.as_bytes());
        Step::Success {
            user: expected.user.clone(),
            server_final: format!("v={}", B64.encode(server_signature)).into_bytes(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677 section 3: user "user", password "pencil".
    fn rfc_keys() -> CredentialKeys {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let (stored_key, server_key) = Hash::Sha256.keys(b"pencil", &salt, 4096);
        CredentialKeys {
            salt,
            iterations: 4096,
            stored_key,
            server_key,
        }
    }

    fn test_decoy() -> Arc<DecoySecret> {
        Arc::new(DecoySecret::from_bytes([3; 32]))
    }

    const SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";

    #[test]
    fn rfc_7677_exchange_succeeds_with_its_server_signature() {
        let mut exchange = ScramExchange::new(Hash::Sha256, test_decoy());
        let first = exchange.step(
            b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
            |u| (u == "user").then(rfc_keys),
            SERVER_NONCE,
        );
        let Step::Challenge(challenge) = first else {
            panic!("{first:?}")
        };
        assert_eq!(
            String::from_utf8(challenge).unwrap(),
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
        );
        let last = exchange.step(
            b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            |_| None,
            "",
        );
        match last {
            Step::Success { user, server_final } => {
                assert_eq!(user, "user");
                assert_eq!(
                    String::from_utf8(server_final).unwrap(),
                    "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
                );
            }
            other => panic!("{other:?}"),
        }
    }

    /// A client-final message for `nonce` with the proof of password "pencil".
    fn client_final(nonce: &str) -> Vec<u8> {
        let keys = rfc_keys();
        let salted = Hash::Sha256.salted_password(b"pencil", &keys.salt, keys.iterations);
        let client_key = Hash::Sha256.hmac(&salted, b"Client Key");
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!(
            "n=user,r=rOprNGfwEbeRWgbNEkqO,r=rOprNGfwEbeRWgbNEkqO{SERVER_NONCE},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,{without_proof}"
        );
        let signature = Hash::Sha256.hmac(&keys.stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(k, s)| k ^ s)
            .collect();
        format!("{without_proof},p={}", B64.encode(proof)).into_bytes()
    }

    #[test]
    fn the_client_nonce_sent_twice_by_older_librdkafka_is_accepted_and_nothing_looser() {
        let client = "rOprNGfwEbeRWgbNEkqO";
        let cases = [
            (format!("{client}{SERVER_NONCE}"), true),
            (format!("{client}{client}{SERVER_NONCE}"), true),
            (format!("{client}{client}{client}{SERVER_NONCE}"), false),
            (SERVER_NONCE.to_owned(), false),
            (format!("x{client}{SERVER_NONCE}"), false),
            (client.to_owned(), false),
        ];
        for (nonce, accepted) in cases {
            let mut exchange = ScramExchange::new(Hash::Sha256, test_decoy());
            exchange.step(
                format!("n,,n=user,r={client}").as_bytes(),
                |_| Some(rfc_keys()),
                SERVER_NONCE,
            );
            let last = exchange.step(&client_final(&nonce), |_| None, "");
            assert_eq!(
                matches!(last, Step::Success { .. }),
                accepted,
                "r={nonce}: {last:?}"
            );
        }
    }

    #[test]
    fn a_wrong_proof_fails() {
        let mut exchange = ScramExchange::new(Hash::Sha256, test_decoy());
        exchange.step(
            b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
            |_| Some(rfc_keys()),
            SERVER_NONCE,
        );
        let last = exchange.step(
            b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=AHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            |_| None,
            "",
        );
        assert!(
            matches!(&last, Step::Failure { reason, .. } if reason == "invalid credentials"),
            "{last:?}"
        );
    }

    #[test]
    fn an_unknown_user_gets_a_stable_decoy_salt_and_fails() {
        let salt_of = || {
            let mut exchange = ScramExchange::new(Hash::Sha512, test_decoy());
            match exchange.step(b"n,,n=nobody,r=abc", |_| None, "xyz") {
                Step::Challenge(c) => String::from_utf8(c).unwrap(),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(salt_of(), salt_of());
        let mut exchange = ScramExchange::new(Hash::Sha512, test_decoy());
        exchange.step(b"n,,n=nobody,r=abc", |_| None, "xyz");
        let proof = B64.encode([0u8; 64]);
        let last = exchange.step(
            format!("c=biws,r=abcxyz,p={proof}").as_bytes(),
            |_| None,
            "",
        );
        assert!(matches!(last, Step::Failure { .. }), "{last:?}");
    }

    #[test]
    fn malformed_messages_fail_without_panicking() {
        for message in [
            &b""[..],
            b"n",
            b"x,,n=u,r=a",
            b"p=tls-unique,,n=u,r=a",
            b"n,,m=ext,n=u,r=a",
            b"n,,n=u",
            b"n,,n=bad=name,r=a",
            b"n,a=other,n=u,r=a",
            b"\xff\xfe",
        ] {
            let mut exchange = ScramExchange::new(Hash::Sha256, test_decoy());
            let step = exchange.step(message, |_| Some(rfc_keys()), "s");
            assert!(
                matches!(step, Step::Failure { .. }),
                "{message:?}: {step:?}"
            );
        }
        let mut exchange = ScramExchange::new(Hash::Sha256, test_decoy());
        exchange.step(b"n,,n=u,r=a", |_| Some(rfc_keys()), "s");
        let step = exchange.step(b"c=biws,r=as", |_| None, "");
        assert!(matches!(step, Step::Failure { .. }));
        let step = exchange.step(b"anything", |_| None, "");
        assert!(matches!(step, Step::Failure { .. }));
    }

    #[test]
    fn saslnames_decode_escapes() {
        assert_eq!(decode_saslname("a=2Cb=3Dc").as_deref(), Some("a,b=c"));
        assert_eq!(decode_saslname("a=4"), None);
    }
}
