//! The user's side: the [`Handler`] trait (implemented with `#[derive(steadfast::Handler)]`),
//! the [`HandlerError`] classes that decide retry and dead-lettering, and the [`Context`]
//! a handler gets with every message.

mod batch;
mod context;
mod error;
mod service;
mod transaction;

use std::future::Future;

pub use self::batch::{
    handle_one, Batch, BatchContext, BatchHandler, BatchRunner, BatchTransaction, Item,
};
pub(crate) use self::batch::{runner_of, BatchService, BatchSettings};
pub use self::context::{Context, Dependency};
pub use self::error::HandlerError;
pub use self::service::HandlerService;
pub use self::transaction::Transaction;

use crate::message::Message;

/// A message handler bound to its message type and consumer group.
///
/// Implemented with `#[derive(steadfast::Handler)]`, which forwards to an inherent
/// `async fn handle(&self, msg: M, cx: &steadfast::Context) -> Result<(), steadfast::HandlerError>`:
///
/// ```
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, Serialize, Deserialize, steadfast::Message)]
/// # #[message(topic = "orders", key = order_id)]
/// # struct OrderUpdated { order_id: String }
/// #[derive(steadfast::Handler)]
/// #[handler(message = OrderUpdated, group = "billing")]
/// struct Billing;
///
/// impl Billing {
///     async fn handle(&self, msg: OrderUpdated, _cx: &steadfast::Context) -> Result<(), steadfast::HandlerError> {
///         if msg.order_id.is_empty() {
///             return Err(steadfast::HandlerError::permanent("order without id"));
///         }
///         Ok(())
///     }
/// }
/// ```
pub trait Handler: Send + Sync + 'static {
    /// The message type this handler consumes.
    type Message: Message;
    /// The consumer group the handler's workers join.
    const GROUP: &'static str;
    /// Handles one message. An `Err` is classified by its [`HandlerError`] variant.
    fn handle_message(
        &self,
        message: Self::Message,
        cx: &Context,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;
    /// The batch path of a batch handler (`#[handler(..., batch)]`, which writes this);
    /// `None`, the default, for a handler of single records.
    #[doc(hidden)]
    fn batch_runner(handler: std::sync::Arc<Self>) -> Option<BatchRunner<Self::Message>>
    where
        Self: Sized,
    {
        let _ = handler;
        None
    }
}
