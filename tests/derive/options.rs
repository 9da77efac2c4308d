//! Compiled as part of the derive tests (a module of `derive.rs`), then run: optional keys
//! left out, keys split over attributes, other key and version types, the raw and Protobuf codecs, paths in
//! `message = ...`, generics, and a `handle` that is not an `async fn`.
use std::future::Future;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use steadfast::{Context, Handler, HandlerError, Message};

#[derive(Serialize, Deserialize, steadfast::Message)]
#[message(topic = "accounts.v2_eu-west")]
#[message(key = account)]
struct KeyOnly {
    account: u64,
}

#[derive(Serialize, Deserialize, steadfast::Message)]
#[message(topic = "ticks", key = symbol, version = at, id = seq, codec = json)]
struct Tick {
    symbol: char,
    at: Option<u32>,
    seq: u64,
}

#[derive(steadfast::Message)]
#[message(topic = "blobs", key = bytes, version = seen, codec = raw)]
struct Blob {
    bytes: Vec<u8>,
    seen: SystemTime,
}

// The raw codec decodes through `TryFrom<&[u8]>`, whatever its error type.
#[allow(clippy::infallible_try_from)]
impl TryFrom<&[u8]> for Blob {
    type Error = std::convert::Infallible;
    fn try_from(b: &[u8]) -> Result<Self, Self::Error> {
        Ok(Blob {
            bytes: b.to_vec(),
            seen: SystemTime::UNIX_EPOCH,
        })
    }
}
impl AsRef<[u8]> for Blob {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

/// A Protobuf message (prost), the codec named in quotes.
#[derive(Clone, PartialEq, prost::Message, steadfast::Message)]
#[message(topic = "quotes", key = symbol, version = at, codec = "protobuf")]
struct Quote {
    #[prost(string, tag = "1")]
    symbol: String,
    #[prost(int64, tag = "2")]
    at: i64,
    #[prost(double, tag = "3")]
    price: f64,
}

#[derive(Serialize, Deserialize, steadfast::Message)]
#[message(topic = "wrapped", key = r#type)]
#[serde(bound = "T: Serialize + serde::de::DeserializeOwned")]
struct Wrapped<T: Serialize + serde::de::DeserializeOwned + Send + Sync + 'static> {
    r#type: String,
    inner: T,
}

mod handlers {
    #[derive(steadfast::Handler)]
    #[handler(group = "accounts", message = super::KeyOnly)]
    pub(super) struct Accounts<const N: usize>;

    impl<const N: usize> Accounts<N> {
        pub(super) async fn handle(
            &self,
            _msg: super::KeyOnly,
            _cx: &steadfast::Context,
        ) -> Result<(), steadfast::HandlerError> {
            Ok(())
        }
    }
}

#[derive(steadfast::Handler)]
#[handler(message = Blob, group = "blobs")]
struct Blobs;

impl Blobs {
    fn handle(
        &self,
        msg: Blob,
        _cx: &Context,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send + 'static {
        async move {
            drop(msg);
            Ok(())
        }
    }
}

/// Checks what the derives implemented for the types above.
pub(crate) fn run() {
    let k = KeyOnly { account: 42 };
    assert_eq!(k.key(), b"42");
    assert_eq!(k.version(), None);
    assert_eq!(k.id(), None);
    assert_eq!(KeyOnly::TOPIC, "accounts.v2_eu-west");

    let t = Tick {
        symbol: 'x',
        at: None,
        seq: 3,
    };
    assert_eq!(t.key(), b"x");
    assert_eq!(t.version(), Some(i64::MIN));
    assert_eq!(t.id().as_deref(), Some("3"));

    let b = Blob::decode(b"raw").unwrap();
    assert_eq!(b.key(), b"raw");
    assert_eq!(b.version(), Some(0));
    assert_eq!(b.encode().unwrap(), b"raw");

    let q = Quote {
        symbol: "ACME".into(),
        at: 1_796_083_200_000,
        price: 12.5,
    };
    let bytes = q.encode().unwrap();
    assert_eq!(
        bytes,
        prost::Message::encode_to_vec(&q),
        "the Protobuf wire form"
    );
    assert_eq!(Quote::decode(&bytes).unwrap(), q);
    assert_eq!(
        (q.key(), q.version()),
        (b"ACME".to_vec(), Some(1_796_083_200_000))
    );
    assert!(
        Quote::decode(b"\xff\xff").is_err(),
        "a payload that is not Protobuf does not decode"
    );

    let w = Wrapped {
        r#type: "w".into(),
        inner: 1u8,
    };
    assert_eq!(w.key(), b"w");
    assert_eq!(w.inner, 1);

    assert_eq!(<handlers::Accounts<4> as Handler>::GROUP, "accounts");
    assert_eq!(<Blobs as Handler>::GROUP, "blobs");
}
