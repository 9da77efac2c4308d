use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, steadfast::Message)]
#[message(topic = "orders", version = updated_at)]
struct OrderUpdated {
    order_id: String,
    updated_at: i64,
}

fn main() {}
