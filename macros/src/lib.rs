//! Derive macros for steadfast: `#[derive(Message)]` binds a type to its topic, key, version
//! and id fields; `#[derive(Handler)]` binds a handler to its message type and group.
//!
//! Use them through the `steadfast` crate, which re-exports both:
//!
//! ```
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Serialize, Deserialize, steadfast::Message)]
//! #[message(topic = "orders", key = order_id, version = updated_at, id = event_id)]
//! struct OrderUpdated {
//!     event_id: String,
//!     order_id: String,
//!     updated_at: i64,
//!     amount_cents: i64,
//! }
//!
//! #[derive(steadfast::Handler)]
//! #[handler(message = OrderUpdated, group = "billing")]
//! struct Billing;
//!
//! impl Billing {
//!     async fn handle(
//!         &self,
//!         msg: OrderUpdated,
//!         _cx: &steadfast::Context,
//!     ) -> Result<(), steadfast::HandlerError> {
//!         if msg.amount_cents < 0 {
//!             return Err(steadfast::HandlerError::permanent("negative amount"));
//!         }
//!         Ok(())
//!     }
//! }
//!
//! use steadfast::{Handler as _, Message as _};
//! assert_eq!(OrderUpdated::TOPIC, "orders");
//! assert_eq!(Billing::GROUP, "billing");
//! ```
//!
//! The expansions name `::steadfast`, so the crate using the derives depends on `steadfast`
//! under that name.

use proc_macro::TokenStream;
use syn::{parse_macro_input, DeriveInput};

mod handler;
mod message;

/// Implements `steadfast::Message` for a struct with named fields.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use steadfast::Message as _;
///
/// #[derive(Debug, PartialEq, Serialize, Deserialize, steadfast::Message)]
/// #[message(topic = "orders", key = order_id, version = updated_at, id = event_id)]
/// struct OrderUpdated {
///     event_id: String,
///     order_id: String,
///     updated_at: i64,
///     amount_cents: i64,
/// }
///
/// let m = OrderUpdated {
///     event_id: "e-1".into(),
///     order_id: "o-1".into(),
///     updated_at: 1_700_000_000_000,
///     amount_cents: 1250,
/// };
/// assert_eq!(OrderUpdated::TOPIC, "orders");
/// assert_eq!(m.key(), b"o-1");
/// assert_eq!(m.version(), Some(1_700_000_000_000));
/// assert_eq!(m.id().as_deref(), Some("e-1"));
/// assert_eq!(OrderUpdated::decode(&m.encode().unwrap()).unwrap(), m);
/// ```
///
/// # The `#[message(...)]` attribute
///
/// | key | required | value |
/// |-----|----------|-------|
/// | `topic` | yes | the topic, a string: `topic = "orders"` (checked against Kafka's naming rules) |
/// | `key` | yes | the field whose value orders the messages: `key = order_id`; its type implements `MessageKey` (strings, integers, `char`, `Vec<u8>`) |
/// | `version` | no | a field that grows with every update of the key: `version = updated_at`; its type implements `MessageVersion` (integers up to 64 bits, `SystemTime`, `Option` of those) |
/// | `id` | no | a field that identifies the event, for deduplication: `id = event_id`; any `Display` type |
/// | `codec` | no | `json` (the default; the type implements serde's `Serialize` and `Deserialize`) or `raw` (the type converts from `&[u8]` with `TryFrom` and to bytes with `AsRef<[u8]>`) |
///
/// The keys may be split over several `#[message(...)]` attributes. A field of a type that
/// cannot serve as a key or version is a compile error pointing at that field's type.
///
/// ```compile_fail
/// #[derive(serde::Serialize, serde::Deserialize, steadfast::Message)]
/// #[message(topic = "prices", key = sku, version = observed_at)]
/// struct PriceSeen {
///     sku: String,
///     observed_at: f64, // error: `f64` cannot serve as a message version
/// }
/// ```
#[proc_macro_derive(Message, attributes(message))]
pub fn derive_message(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    message::expand(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Implements `steadfast::Handler` by forwarding to the type's inherent `handle` method.
///
/// The type needs an inherent
/// `async fn handle(&self, msg: M, cx: &steadfast::Context) -> Result<(), steadfast::HandlerError>`
/// where `M` is the type named by `message = ...`; its future must be `Send`.
///
/// ```
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, Serialize, Deserialize, steadfast::Message)]
/// # #[message(topic = "orders", key = order_id)]
/// # struct OrderUpdated { order_id: String, amount_cents: i64 }
/// use steadfast::{Context, Handler as _, HandlerError};
///
/// #[derive(steadfast::Handler)]
/// #[handler(message = OrderUpdated, group = "billing")]
/// struct Billing {
///     limit_cents: i64,
/// }
///
/// impl Billing {
///     async fn handle(&self, msg: OrderUpdated, cx: &Context) -> Result<(), HandlerError> {
///         if msg.amount_cents > self.limit_cents {
///             return Err(HandlerError::permanent(format!(
///                 "order {} over the limit (attempt {})",
///                 msg.order_id,
///                 cx.attempt()
///             )));
///         }
///         Ok(())
///     }
/// }
///
/// assert_eq!(Billing::GROUP, "billing");
/// ```
///
/// # The `#[handler(...)]` attribute
///
/// | key | required | value |
/// |-----|----------|-------|
/// | `message` | yes | the message type, which implements `steadfast::Message`: `message = OrderUpdated` |
/// | `group` | yes | the consumer group, a non-empty string: `group = "billing"` |
///
/// A type without an inherent `handle` is a compile error pointing at its name:
///
/// ```compile_fail
/// # #[derive(serde::Serialize, serde::Deserialize, steadfast::Message)]
/// # #[message(topic = "orders", key = order_id)]
/// # struct OrderUpdated { order_id: String }
/// #[derive(steadfast::Handler)]
/// #[handler(message = OrderUpdated, group = "billing")]
/// struct Billing; // error: no function or associated item named `handle` found
/// ```
#[proc_macro_derive(Handler, attributes(handler))]
pub fn derive_handler(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    handler::expand(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}
