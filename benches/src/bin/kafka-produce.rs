//! Runs the `kafka-produce` scenario on its own and prints its JSON line, until the scenario
//! joins `meshbench`'s registry. `cargo run --release -p meshlib-benches --bin kafka-produce
//! [records]` (default 200 000 per variant).

#[path = "../scenarios/kafka_produce.rs"]
mod kafka_produce;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let records = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(200_000);
    println!("{}", kafka_produce::run(records).await);
}
