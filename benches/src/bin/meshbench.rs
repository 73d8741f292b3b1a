//! meshbench: runs a named load scenario and prints one JSON object per line.
//!
//! ```sh
//! cargo run --release -p meshlib-benches --bin meshbench -- grpc-overhead [--seconds 1] [--rounds 5] [--concurrency 16]
//! ```

#[path = "../scenarios/grpc_overhead.rs"]
mod grpc_overhead;

use std::time::Duration;

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(scenario) = args.next() else {
        eprintln!(
            "usage: meshbench <scenario> [--seconds S] [--rounds N] [--concurrency C]\nscenarios: grpc-overhead"
        );
        std::process::exit(2);
    };
    let mut settings = grpc_overhead::Settings::default();
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_default();
        let bad = || -> ! {
            eprintln!("{flag} {value:?}: expected a positive number");
            std::process::exit(2)
        };
        match flag.as_str() {
            "--seconds" => {
                settings.round =
                    Duration::try_from_secs_f64(value.parse().unwrap_or_else(|_| bad()))
                        .unwrap_or_else(|_| bad());
            }
            "--rounds" => settings.rounds = value.parse().unwrap_or_else(|_| bad()),
            "--concurrency" => settings.concurrency = value.parse().unwrap_or_else(|_| bad()),
            _ => {
                eprintln!("unknown option {flag}");
                std::process::exit(2);
            }
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let line = match scenario.as_str() {
        "grpc-overhead" => runtime.block_on(grpc_overhead::run(settings)),
        other => {
            eprintln!("unknown scenario {other:?}; scenarios: grpc-overhead");
            std::process::exit(2);
        }
    };
    println!("{line}");
}
