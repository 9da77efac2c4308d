//! The example, run: `#[derive(Message)]` and `#[derive(Handler)]` on `OrderUpdated`
//! and `Billing`, and the trait items they implement.

#[path = "derive/options.rs"]
mod options;

use serde::{Deserialize, Serialize};
use steadfast::{Context, Handler, HandlerError, Message};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, steadfast::Message)]
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

fn order() -> OrderUpdated {
    OrderUpdated {
        event_id: "evt-9".into(),
        order_id: "ord-17".into(),
        updated_at: 1_700_000_000_123,
        amount_cents: 4200,
    }
}

#[test]
fn message_topic_key_version_id() {
    let m = order();
    assert_eq!(<OrderUpdated as Message>::TOPIC, "orders");
    assert_eq!(m.key(), b"ord-17".to_vec());
    assert_eq!(m.version(), Some(1_700_000_000_123));
    assert_eq!(m.id(), Some("evt-9".to_owned()));
}

#[test]
fn json_round_trip() {
    let m = order();
    let payload = m.encode().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "event_id": "evt-9",
            "order_id": "ord-17",
            "updated_at": 1_700_000_000_123_i64,
            "amount_cents": 4200,
        })
    );
    assert_eq!(OrderUpdated::decode(&payload).unwrap(), m);
    let err = OrderUpdated::decode(b"{\"order_id\": 1}").unwrap_err();
    assert!(
        err.to_string().starts_with("payload does not decode"),
        "{err}"
    );
}

#[test]
fn handler_message_and_group() {
    fn message_type_of<H: Handler<Message = OrderUpdated>>() {}
    message_type_of::<Billing>();
    assert_eq!(<Billing as Handler>::GROUP, "billing");
}

#[test]
fn options_keys_codecs_generics_and_plain_handle_fns() {
    options::run();
}
