use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, steadfast::Message)]
#[message(topic = "order events", key = order_id)]
struct OrderUpdated {
    order_id: String,
}

fn main() {}
