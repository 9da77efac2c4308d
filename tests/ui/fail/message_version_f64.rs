use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, steadfast::Message)]
#[message(topic = "prices", key = sku, version = observed_at)]
struct PriceSeen {
    sku: String,
    observed_at: f64,
}

fn main() {}
