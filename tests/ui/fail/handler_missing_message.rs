#[derive(steadfast::Handler)]
#[handler(group = "billing")]
struct Billing;

fn main() {}
