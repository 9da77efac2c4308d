use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, steadfast::Message)]
#[message(topic = "orders", key = order_id)]
struct OrderUpdated {
    order_id: String,
}

#[derive(steadfast::Handler)]
#[handler(message = OrderUpdated)]
struct Billing;

fn main() {}
