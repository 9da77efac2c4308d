use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, steadfast::Message)]
#[message(topic = "orders", key = order_id)]
struct OrderUpdated {
    order_id: String,
}

#[derive(steadfast::Handler)]
#[handler(message = OrderUpdated, group = "billing")]
struct Billing;

impl Billing {
    async fn handle(&self, msg: &OrderUpdated) -> Result<(), String> {
        let _ = msg;
        Ok(())
    }
}

fn main() {}
