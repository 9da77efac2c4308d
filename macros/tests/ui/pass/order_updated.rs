//! The example: both derives, and the trait items they implement.
use serde::{Deserialize, Serialize};
use steadfast::{Context, Handler, HandlerError, Message};

#[derive(Debug, PartialEq, Serialize, Deserialize, steadfast::Message)]
#[message(topic = "orders", key = order_id, version = updated_at, id = event_id)]
struct OrderUpdated {
    event_id: String,
    order_id: String,
    updated_at: i64,
    amount_cents: i64,
}

#[derive(steadfast::Handler)]
#[handler(message = OrderUpdated, group = "billing")]
struct Billing;

impl Billing {
    async fn handle(&self, msg: OrderUpdated, _cx: &Context) -> Result<(), HandlerError> {
        if msg.amount_cents < 0 {
            return Err(HandlerError::permanent("negative amount"));
        }
        Ok(())
    }
}

fn main() {
    let m = OrderUpdated {
        event_id: "e-1".into(),
        order_id: "o-1".into(),
        updated_at: 7,
        amount_cents: 10,
    };
    assert_eq!(<OrderUpdated as Message>::TOPIC, "orders");
    assert_eq!(m.key(), b"o-1");
    assert_eq!(m.version(), Some(7));
    assert_eq!(m.id().as_deref(), Some("e-1"));
    assert_eq!(OrderUpdated::decode(&m.encode().unwrap()).unwrap(), m);
    assert_eq!(<Billing as Handler>::GROUP, "billing");
}
