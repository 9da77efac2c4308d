use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, steadfast::Message)]
#[message(key = order_id)]
struct OrderUpdated {
    order_id: String,
}

fn main() {}
