use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, steadfast::Message)]
struct OrderUpdated {
    order_id: String,
}

fn main() {}
