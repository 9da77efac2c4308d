//! One connection's authentication: which requests it may send yet, the SaslHandshake and
//! SaslAuthenticate exchanges, and the request context it carries once authenticated.
//!
//! After a SaslHandshake v0 (older clients), the SASL tokens follow as raw length-prefixed
//! frames rather than SaslAuthenticate requests, and are answered the same way; a failure
//! then closes the connection without an answer, as Kafka does.

use std::net::SocketAddr;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{
    ApiKey, SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest,
    SaslHandshakeResponse,
};
use kafka_protocol::protocol::StrBytes;

use super::crypto::{random_bytes, Hash};
use super::plain::PlainMessage;
use super::rights::{Access, Rights};
use super::scram::{ScramExchange, Step};
use super::users::UsersFile;
use super::{RequestContext, UserDirectory};
use crate::api::respond;
use crate::protocol::{RequestError, RequestFrame};

/// SASL mechanisms served, in the order a SaslHandshake response lists them.
pub(crate) const MECHANISMS: &[&str] = &["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"];

/// What the connection does with a request.
#[derive(Debug)]
pub(crate) enum Admission {
    /// Hand it to the API handlers with this context.
    Dispatch(Arc<RequestContext>),
    /// A SASL request: [`Session::sasl`] answers it.
    Sasl,
    /// Close the connection without answering.
    Refuse(&'static str),
}

enum Exchange {
    Plain,
    Scram(ScramExchange),
}

impl Exchange {
    fn name(&self) -> &'static str {
        match self {
            Exchange::Plain => "PLAIN",
            Exchange::Scram(s) if s.hash() == Hash::Sha256 => "SCRAM-SHA-256",
            Exchange::Scram(_) => "SCRAM-SHA-512",
        }
    }
}

enum State {
    /// Requests go to the handlers.
    Open(Arc<RequestContext>),
    /// A SASL listener before SaslHandshake.
    AwaitingHandshake,
    /// After SaslHandshake, until the exchange succeeds.
    AwaitingAuthenticate {
        exchange: Exchange,
        /// SaslHandshake v0: tokens come as raw frames, not SaslAuthenticate requests.
        raw_tokens: bool,
    },
}

/// What one step of an exchange came to.
enum Outcome {
    /// Send these bytes; the exchange goes on.
    Continue(Vec<u8>),
    /// Authenticated: send these bytes (SCRAM's server-final, nothing for PLAIN).
    Authenticated(Vec<u8>),
    /// Authentication failed (logged): close the connection.
    Failed,
}

/// The answer to a SASL request, and whether the connection closes after sending it.
#[derive(Debug)]
pub(crate) struct SaslReply {
    /// The response frame.
    pub(crate) response: Result<Bytes, RequestError>,
    /// Close the connection once the response is sent.
    pub(crate) close: bool,
}

/// The authentication state of one connection.
pub(crate) struct Session {
    users: Option<Arc<UserDirectory>>,
    advertised: (String, u16),
    peer: SocketAddr,
    state: State,
    /// Context for ApiVersions before authentication: no rights.
    unauthenticated: Arc<RequestContext>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// The session of a new connection. On a listener without SASL it is open at once: with
    /// everything allowed when there is no users file, else as `principal` (a client
    /// certificate's common name) or `ANONYMOUS`.
    pub(crate) async fn start(
        sasl: bool,
        users: Option<Arc<UserDirectory>>,
        advertised: (String, u16),
        peer: SocketAddr,
        principal: Option<String>,
    ) -> Self {
        let context = |access| {
            Arc::new(RequestContext {
                access,
                advertised: advertised.clone(),
            })
        };
        let unauthenticated = context(no_rights(""));
        let state = if sasl {
            State::AwaitingHandshake
        } else {
            let access = match &users {
                None => Access::Everything,
                Some(users) => {
                    let users = users.clone();
                    let lookup = move || match principal {
                        Some(name) => users.access_of(&name),
                        None => users.anonymous(),
                    };
                    tokio::task::spawn_blocking(lookup)
                        .await
                        .unwrap_or_else(|_| no_rights(""))
                }
            };
            State::Open(context(access))
        };
        Session {
            users,
            advertised,
            peer,
            state,
            unauthenticated,
        }
    }

    /// Whether the next frame is a raw SASL token (after a SaslHandshake v0), not a request.
    pub(crate) fn awaits_raw_token(&self) -> bool {
        matches!(
            self.state,
            State::AwaitingAuthenticate {
                raw_tokens: true,
                ..
            }
        )
    }

    /// Whether requests go to the handlers: authenticated, or on a listener without SASL.
    pub(crate) fn is_authenticated(&self) -> bool {
        matches!(self.state, State::Open(_))
    }

    /// Decides what happens to a request before it is handled.
    pub(crate) fn admit(&self, api: ApiKey) -> Admission {
        match (api, &self.state) {
            (ApiKey::SaslHandshake | ApiKey::SaslAuthenticate, _) => Admission::Sasl,
            (_, State::Open(context)) => Admission::Dispatch(context.clone()),
            (ApiKey::ApiVersions, _) => Admission::Dispatch(self.unauthenticated.clone()),
            _ => Admission::Refuse("request before authentication"),
        }
    }

    /// Answers a SaslHandshake or SaslAuthenticate request.
    pub(crate) async fn sasl(&mut self, frame: &RequestFrame) -> SaslReply {
        let served = crate::api::api_versions::served_range(frame.api_key);
        if !served.is_some_and(|range| range.contains(&frame.api_version)) {
            return fail(Err(RequestError::Malformed {
                api: frame.api_key,
                version: frame.api_version,
                reason: "version not served".to_owned(),
            }));
        }
        match frame.api_key {
            ApiKey::SaslHandshake => self.handshake(frame),
            _ => self.authenticate(frame).await,
        }
    }

    fn handshake(&mut self, frame: &RequestFrame) -> SaslReply {
        let request: SaslHandshakeRequest = match frame.decode() {
            Ok(r) => r,
            Err(e) => return fail(Err(e)),
        };
        let mechanisms = MECHANISMS
            .iter()
            .map(|m| StrBytes::from_static_str(m))
            .collect();
        let answer = |error: i16| {
            let response = SaslHandshakeResponse::default()
                .with_error_code(error)
                .with_mechanisms(mechanisms);
            respond(frame, &response)
        };
        if !matches!(self.state, State::AwaitingHandshake) {
            tracing::warn!(peer = %self.peer, "SaslHandshake out of place; closing connection");
            return fail(answer(ResponseError::IllegalSaslState.code()));
        }
        let Some(users) = &self.users else {
            tracing::warn!(peer = %self.peer, "SaslHandshake without a users file; closing connection");
            return fail(answer(ResponseError::IllegalSaslState.code()));
        };
        let decoy = users.decoy().clone();
        let exchange = match request.mechanism.as_str() {
            "PLAIN" => Exchange::Plain,
            "SCRAM-SHA-256" => Exchange::Scram(ScramExchange::new(Hash::Sha256, decoy)),
            "SCRAM-SHA-512" => Exchange::Scram(ScramExchange::new(Hash::Sha512, decoy)),
            other => {
                tracing::warn!(peer = %self.peer, mechanism = other, "unsupported SASL mechanism; closing connection");
                return fail(answer(ResponseError::UnsupportedSaslMechanism.code()));
            }
        };
        self.state = State::AwaitingAuthenticate {
            exchange,
            raw_tokens: frame.api_version == 0,
        };
        SaslReply {
            response: answer(0),
            close: false,
        }
    }

    /// Answers a raw SASL token (after a SaslHandshake v0) with a raw length-prefixed token;
    /// a failure closes the connection without an answer.
    pub(crate) async fn raw_token(&mut self, token: Bytes) -> SaslReply {
        let State::AwaitingAuthenticate {
            exchange,
            raw_tokens: true,
        } = std::mem::replace(&mut self.state, State::AwaitingHandshake)
        else {
            tracing::warn!(peer = %self.peer, "raw SASL token out of place; closing connection");
            return fail(Ok(Bytes::new()));
        };
        let raw = |bytes: Vec<u8>| {
            let mut out = Vec::with_capacity(4 + bytes.len());
            out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
            out.extend_from_slice(&bytes);
            Ok(Bytes::from(out))
        };
        match self.step_exchange(exchange, token.to_vec(), true).await {
            Outcome::Continue(bytes) | Outcome::Authenticated(bytes) => SaslReply {
                response: raw(bytes),
                close: false,
            },
            Outcome::Failed => fail(Ok(Bytes::new())),
        }
    }

    async fn authenticate(&mut self, frame: &RequestFrame) -> SaslReply {
        let request: SaslAuthenticateRequest = match frame.decode() {
            Ok(r) => r,
            Err(e) => return fail(Err(e)),
        };
        let answer = |error: i16, message: Option<String>, bytes: Vec<u8>| {
            let response = SaslAuthenticateResponse::default()
                .with_error_code(error)
                .with_error_message(message.map(StrBytes::from_string))
                .with_auth_bytes(Bytes::from(bytes))
                .with_session_lifetime_ms(0);
            respond(frame, &response)
        };
        let State::AwaitingAuthenticate {
            exchange,
            raw_tokens: false,
        } = std::mem::replace(&mut self.state, State::AwaitingHandshake)
        else {
            tracing::warn!(peer = %self.peer, "SaslAuthenticate before SaslHandshake v1; closing connection");
            return fail(answer(
                ResponseError::IllegalSaslState.code(),
                Some("SaslAuthenticate before SaslHandshake v1".to_owned()),
                Vec::new(),
            ));
        };
        let mechanism = exchange.name();
        match self
            .step_exchange(exchange, request.auth_bytes.to_vec(), false)
            .await
        {
            Outcome::Continue(bytes) | Outcome::Authenticated(bytes) => SaslReply {
                response: answer(0, None, bytes),
                close: false,
            },
            Outcome::Failed => fail(answer(
                ResponseError::SaslAuthenticationFailed.code(),
                Some(format!(
                    "Authentication failed: invalid credentials with SASL mechanism {mechanism}"
                )),
                Vec::new(),
            )),
        }
    }

    /// Runs one step of the exchange on `token` (off the async threads) and moves the
    /// session on: back to awaiting the next token, open, or failed.
    async fn step_exchange(
        &mut self,
        exchange: Exchange,
        token: Vec<u8>,
        raw_tokens: bool,
    ) -> Outcome {
        let Some(users) = self.users.clone() else {
            tracing::warn!(peer = %self.peer, "SASL exchange without a users file; closing connection");
            return Outcome::Failed;
        };
        let mechanism = exchange.name();
        let stepped = tokio::task::spawn_blocking(move || step(exchange, &users, &token)).await;
        let (exchange, step) = match stepped {
            Ok(result) => result,
            Err(e) => {
                tracing::error!(error = %e, "authentication task failed");
                return Outcome::Failed;
            }
        };
        match step {
            Step::Challenge(bytes) => {
                self.state = State::AwaitingAuthenticate {
                    exchange,
                    raw_tokens,
                };
                Outcome::Continue(bytes)
            }
            Step::Success { user, server_final } => {
                let access = match self.users.clone() {
                    Some(users) => {
                        let name = user.clone();
                        tokio::task::spawn_blocking(move || users.access_of(&name))
                            .await
                            .unwrap_or_else(|_| no_rights(&user))
                    }
                    None => Access::Everything,
                };
                tracing::info!(peer = %self.peer, %user, mechanism, handshake_v0 = raw_tokens, "authenticated");
                self.state = State::Open(Arc::new(RequestContext {
                    access,
                    advertised: self.advertised.clone(),
                }));
                Outcome::Authenticated(server_final)
            }
            Step::Failure { user, reason } => {
                tracing::warn!(peer = %self.peer, user = user.as_deref().unwrap_or("?"), mechanism, %reason, "authentication failed; closing connection");
                Outcome::Failed
            }
        }
    }
}

fn no_rights(name: &str) -> Access {
    Access::User {
        name: name.to_owned(),
        rights: Rights::default(),
    }
}

fn fail(response: Result<Bytes, RequestError>) -> SaslReply {
    SaslReply {
        response,
        close: true,
    }
}

/// Runs one step of an exchange against the current users file (blocking: it may re-read
/// the file, and PLAIN derives a key).
fn step(mut exchange: Exchange, users: &UserDirectory, token: &[u8]) -> (Exchange, Step) {
    let file: Arc<UsersFile> = users.current();
    let step = match &mut exchange {
        Exchange::Plain => match PlainMessage::parse(token) {
            Err(reason) => Step::Failure {
                user: None,
                reason: reason.to_owned(),
            },
            Ok(message) => {
                // Unknown users cost a dummy verification of the same price as a real one.
                let user = file.users.get(&message.user);
                match (user.is_some(), message.verify(user, users.decoy())) {
                    (true, true) => Step::Success {
                        user: message.user.clone(),
                        server_final: Vec::new(),
                    },
                    (true, false) => Step::Failure {
                        user: Some(message.user.clone()),
                        reason: "invalid credentials".to_owned(),
                    },
                    (false, _) => Step::Failure {
                        user: Some(message.user.clone()),
                        reason: "unknown user".to_owned(),
                    },
                }
            }
        },
        Exchange::Scram(scram) => {
            let hash = scram.hash();
            let nonce = match random_bytes(18) {
                Ok(bytes) => B64.encode(bytes),
                Err(e) => {
                    return (
                        exchange,
                        Step::Failure {
                            user: None,
                            reason: e.to_string(),
                        },
                    )
                }
            };
            let lookup = |name: &str| {
                file.users
                    .get(name)?
                    .credential(hash)
                    .and_then(|c| c.keys().ok())
            };
            scram.step(token, lookup, &nonce)
        }
    };
    (exchange, step)
}
