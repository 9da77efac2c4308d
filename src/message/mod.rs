//! What flows through a worker: the typed [`Message`] a handler receives, the raw
//! [`Envelope`] as it came from the broker, its [`Headers`] (with the names and formats of
//! steadfast's own in [`headers`]), and the [`Outcome`] every message ends in.

mod class;
mod codec;
mod envelope;
mod guard;
pub mod headers;
mod outcome;

pub use self::class::ErrorClass;
pub use self::codec::{Codec, DecodeError, EncodeError, Json, Protobuf, RawBytes};
pub use self::envelope::{Envelope, Headers};
pub use self::guard::{Facts, Guard, HandlerNotes, LeaseState};
pub(crate) use self::outcome::panic_text;
pub use self::outcome::{DropReason, Failure, Outcome, RouteTarget};

/// A message type bound to its topic, key, optional version and optional id.
///
/// Implemented with `#[derive(steadfast::Message)]`:
///
/// ```
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Serialize, Deserialize, steadfast::Message)]
/// #[message(topic = "orders", key = order_id, version = updated_at, id = event_id)]
/// struct OrderUpdated {
///     event_id: String,
///     order_id: String,
///     updated_at: i64,
///     amount_cents: i64,
/// }
///
/// use steadfast::Message as _;
/// let m = OrderUpdated { event_id: "e1".into(), order_id: "o1".into(), updated_at: 7, amount_cents: 10 };
/// assert_eq!(OrderUpdated::TOPIC, "orders");
/// assert_eq!(m.key(), b"o1".to_vec());
/// assert_eq!(m.version(), Some(7));
/// ```
pub trait Message: Sized + Send + Sync + 'static {
    /// The topic messages of this type are consumed from and produced to.
    const TOPIC: &'static str;
    /// The payload format.
    type Codec: Codec<Self>;
    /// The ordering key: the Kafka record key messages of this type are produced with.
    fn key(&self) -> Vec<u8>;
    /// A version that grows with every update of the key (event time or a counter), if any.
    fn version(&self) -> Option<i64> {
        None
    }
    /// A unique id of the event, for deduplication, if any.
    fn id(&self) -> Option<String> {
        None
    }
    /// Decodes a payload.
    fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        <Self::Codec as Codec<Self>>::decode(payload)
    }
    /// Encodes the message as a payload.
    fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        <Self::Codec as Codec<Self>>::encode(self)
    }
}

/// A field type that can serve as a message key: it has a stable byte form.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot serve as a message key",
    label = "the `key` field's type does not implement `MessageKey`",
    note = "a key is a `String`, an integer, a `char` or a `Vec<u8>`; for another type, implement `steadfast::message::MessageKey` for it"
)]
pub trait MessageKey {
    /// The key's bytes, as used for the Kafka record key.
    fn key_bytes(&self) -> Vec<u8>;
}

macro_rules! key_by_display {
    ($($t:ty),*) => {$(
        impl MessageKey for $t {
            fn key_bytes(&self) -> Vec<u8> {
                self.to_string().into_bytes()
            }
        }
    )*};
}
key_by_display!(u8, u16, u32, u64, u128, i8, i16, i32, i64, i128, usize, isize, char);

impl MessageKey for String {
    fn key_bytes(&self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }
}
impl MessageKey for str {
    fn key_bytes(&self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }
}
impl MessageKey for Vec<u8> {
    fn key_bytes(&self) -> Vec<u8> {
        self.clone()
    }
}
impl<T: MessageKey + ?Sized> MessageKey for &T {
    fn key_bytes(&self) -> Vec<u8> {
        (**self).key_bytes()
    }
}

/// A field type that can serve as a message version: it converts to an `i64` that grows
/// with every update (integers up to 64 bits; times as milliseconds).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot serve as a message version",
    label = "the `version` field's type does not implement `MessageVersion`",
    note = "a version is an integer up to 64 bits, a `SystemTime` or an `Option` of those; for another type, implement `steadfast::message::MessageVersion` for it"
)]
pub trait MessageVersion {
    /// The version as a number compared with `>`.
    fn as_version(&self) -> i64;
}

macro_rules! version_by_cast {
    ($($t:ty),*) => {$(
        impl MessageVersion for $t {
            fn as_version(&self) -> i64 {
                i64::from(*self)
            }
        }
    )*};
}
version_by_cast!(u8, u16, u32, i8, i16, i32, i64);

impl MessageVersion for u64 {
    fn as_version(&self) -> i64 {
        i64::try_from(*self).unwrap_or(i64::MAX)
    }
}
impl MessageVersion for std::time::SystemTime {
    fn as_version(&self) -> i64 {
        match self.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
        }
    }
}
impl<T: MessageVersion> MessageVersion for Option<T> {
    fn as_version(&self) -> i64 {
        self.as_ref().map_or(i64::MIN, MessageVersion::as_version)
    }
}

/// A field type that can serve as a message id.
pub trait MessageId {
    /// The id as text.
    fn as_id(&self) -> String;
}
impl<T: std::fmt::Display> MessageId for T {
    fn as_id(&self) -> String {
        self.to_string()
    }
}
