use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Customer {
    id: u64,
}

#[derive(Serialize, Deserialize, steadfast::Message)]
#[message(topic = "orders", key = tags)]
struct Tagged {
    tags: Vec<String>,
}

#[derive(Serialize, Deserialize, steadfast::Message)]
#[message(topic = "orders", key = customer)]
struct ByCustomer {
    customer: Customer,
}

fn main() {}
