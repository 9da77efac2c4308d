use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, steadfast::Message)]
#[message(topic = "orders", key = order_id)]
struct OrderUpdated {
    order_id: String,
}

#[derive(steadfast::Handler)]
#[handler(message = OrderUpdated, group = "billing", concurrency = 8)]
struct Billing;

fn main() {}
