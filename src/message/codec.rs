//! Payload formats: JSON through serde (the default) and raw bytes.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A payload that could not be decoded; the message goes to the dead-letter topic at once.
#[derive(Debug, thiserror::Error)]
#[error("payload does not decode: {0}")]
pub struct DecodeError(pub String);

/// A message that could not be encoded.
#[derive(Debug, thiserror::Error)]
#[error("message does not encode: {0}")]
pub struct EncodeError(pub String);

/// Turns payload bytes into a message and back.
pub trait Codec<M> {
    /// Decodes a payload.
    fn decode(payload: &[u8]) -> Result<M, DecodeError>;
    /// Encodes a message.
    fn encode(message: &M) -> Result<Vec<u8>, EncodeError>;
}

/// JSON through serde: the default codec of `#[derive(Message)]`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json;

impl<M: Serialize + DeserializeOwned> Codec<M> for Json {
    fn decode(payload: &[u8]) -> Result<M, DecodeError> {
        serde_json::from_slice(payload).map_err(|e| DecodeError(e.to_string()))
    }
    fn encode(message: &M) -> Result<Vec<u8>, EncodeError> {
        serde_json::to_vec(message).map_err(|e| EncodeError(e.to_string()))
    }
}

/// Raw bytes: the message type converts from and to the payload itself
/// (`#[message(codec = raw)]`).
#[derive(Debug, Clone, Copy, Default)]
pub struct RawBytes;

impl<M> Codec<M> for RawBytes
where
    M: for<'a> TryFrom<&'a [u8]> + AsRef<[u8]>,
    for<'a> <M as TryFrom<&'a [u8]>>::Error: std::fmt::Display,
{
    fn decode(payload: &[u8]) -> Result<M, DecodeError> {
        M::try_from(payload).map_err(|e| DecodeError(e.to_string()))
    }
    fn encode(message: &M) -> Result<Vec<u8>, EncodeError> {
        Ok(message.as_ref().to_vec())
    }
}
