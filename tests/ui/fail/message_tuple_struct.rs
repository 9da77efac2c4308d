use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, steadfast::Message)]
#[message(topic = "orders", key = order_id)]
struct OrderUpdated(String);

#[derive(Serialize, Deserialize, steadfast::Message)]
#[message(topic = "orders", key = order_id)]
enum OrderEvent {
    Updated { order_id: String },
}

fn main() {}
