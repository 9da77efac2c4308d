use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, steadfast::Message)]
#[message(topic = "orders", key = order_id, partitions = 12)]
struct OrderUpdated {
    order_id: String,
}

fn main() {}
