use serde::{Deserialize, Serialize};
use steadfast::{Context, HandlerError, Worker};

#[derive(Serialize, Deserialize, steadfast::Message)]
#[message(topic = "orders", key = order_id)]
struct OrderUpdated {
    order_id: String,
}

#[derive(steadfast::Handler)]
#[handler(message = OrderUpdated, group = "billing")]
struct Billing;

impl Billing {
    async fn handle(&self, _msg: OrderUpdated, _cx: &Context) -> Result<(), HandlerError> {
        Ok(())
    }
}

#[derive(steadfast::Handler)]
#[handler(message = OrderUpdated, group = "audit")]
struct Audit;

impl Audit {
    async fn handle(&self, _msg: OrderUpdated, _cx: &Context) -> Result<(), HandlerError> {
        Ok(())
    }
}

fn main() {
    // A worker runs one handler: a second would have replaced the first.
    let _ = Worker::builder().handler(Billing).handler(Audit);
}
