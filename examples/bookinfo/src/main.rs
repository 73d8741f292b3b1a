//! `cargo run --release -p bookinfo`: Bookinfo on loopback until Ctrl-C, or for `--demo
//! <seconds>` of traffic and a summary; `bookinfo scenario <name>` switches the routes of the
//! running application.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bookinfo::{Bookinfo, Options, scenario};

const USAGE: &str = "\
Bookinfo on meshlib, without proxies.

usage:
  bookinfo [options]            run on loopback until Ctrl-C
  bookinfo scenario [<name>]    switch the running application's routes (no name: list them)

options:
  --scenario <name>             routes to start with (default: default)
  --demo <seconds>              drive traffic for that long, print a summary and exit
                                (on free ports and its own state directory unless told)
  --base-port <port>            the ingress's port; the workloads take the next ones and their
                                admin endpoints the same plus 100 (default 9080; 0: free ports)
  --kafka-brokers <host:port>   a real Kafka cluster's brokers, comma-separated
                                (default: an embedded cluster)
  --state-dir <dir>             where the running mesh.toml and the certificates go
                                (default: <temp dir>/bookinfo)
  -h, --help                    this text
";

/// What the command line asks for.
#[derive(Debug)]
enum Command {
    Run(Args),
    Scenario {
        name: Option<String>,
        state_dir: Option<PathBuf>,
    },
    Help,
}

#[derive(Debug, Default)]
struct Args {
    scenario: Option<String>,
    demo: Option<Duration>,
    base_port: Option<u16>,
    kafka_brokers: Option<String>,
    state_dir: Option<PathBuf>,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Command, String> {
    let mut parsed = Args::default();
    let mut subcommand_name = None;
    let mut scenario_subcommand = false;
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| args.next().ok_or_else(|| format!("{flag} needs a value"));
        match arg.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--scenario" => parsed.scenario = Some(value(&arg)?),
            "--demo" => {
                let seconds = value(&arg)?;
                let seconds: f64 = seconds
                    .parse()
                    .ok()
                    .filter(|seconds: &f64| {
                        seconds.is_finite() && *seconds > 0.0 && *seconds <= 3600.0
                    })
                    .ok_or_else(|| format!("--demo {seconds}: expected seconds, from 0 to 3600"))?;
                parsed.demo = Some(Duration::from_secs_f64(seconds));
            }
            "--base-port" => {
                let port = value(&arg)?;
                let base: u16 = port
                    .parse()
                    .ok()
                    .filter(|port| *port == 0 || (1024..=65_000).contains(port))
                    .ok_or_else(|| {
                        format!("--base-port {port}: expected 0, or a port from 1024 to 65000")
                    })?;
                parsed.base_port = Some(base);
            }
            "--kafka-brokers" => parsed.kafka_brokers = Some(value(&arg)?),
            "--state-dir" => parsed.state_dir = Some(PathBuf::from(value(&arg)?)),
            "scenario" if !scenario_subcommand => scenario_subcommand = true,
            name if scenario_subcommand && !name.starts_with('-') && subcommand_name.is_none() => {
                subcommand_name = Some(name.to_owned());
            }
            other => return Err(format!("unexpected argument `{other}`")),
        }
    }
    if scenario_subcommand {
        if parsed.scenario.is_some()
            || parsed.demo.is_some()
            || parsed.base_port.is_some()
            || parsed.kafka_brokers.is_some()
        {
            return Err("`bookinfo scenario` takes a name and --state-dir only".to_owned());
        }
        return Ok(Command::Scenario {
            name: subcommand_name,
            state_dir: parsed.state_dir,
        });
    }
    Ok(Command::Run(parsed))
}

fn default_state_dir(demo: bool) -> PathBuf {
    std::env::temp_dir().join(if demo { "bookinfo-demo" } else { "bookinfo" })
}

fn main() -> ExitCode {
    let command = match parse(std::env::args().skip(1)) {
        Ok(command) => command,
        Err(error) => {
            eprintln!("bookinfo: {error}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let result = match command {
        Command::Help => {
            print!("{USAGE}");
            Ok(())
        }
        Command::Scenario { name, state_dir } => switch(
            name.as_deref(),
            state_dir.unwrap_or_else(|| default_state_dir(false)),
        ),
        Command::Run(args) => run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bookinfo: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `bookinfo scenario [<name>]`.
fn switch(name: Option<&str>, state_dir: PathBuf) -> Result<(), String> {
    let Some(name) = name else {
        println!("scenarios (bookinfo scenario <name>):");
        for scenario in scenario::SCENARIOS {
            println!("  {:<12} {}", scenario.name, scenario.summary);
        }
        return Ok(());
    };
    let scenario = scenario::find(name).map_err(|error| error.to_string())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| format!("cannot start the runtime: {error}"))?;
    let confirmed = runtime
        .block_on(bookinfo::switch_running(&state_dir, scenario))
        .map_err(|error| error.to_string())?;
    println!(
        "{name}: {} (all {confirmed} workloads run it)",
        scenario.summary
    );
    Ok(())
}

fn run(args: Args) -> Result<(), String> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,meshlib::mesh=info,meshlib::inbound=info".into()),
        )
        .init();
    let scenario = scenario::find(args.scenario.as_deref().unwrap_or("default"))
        .map_err(|error| error.to_string())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|error| format!("cannot start the runtime: {error}"))?;
    let result = runtime.block_on(async {
        let demo = args.demo.is_some();
        let mut options = Options::new(args.state_dir.unwrap_or_else(|| default_state_dir(demo)))
            .scenario(scenario);
        options.base_port = args.base_port.unwrap_or(if demo { 0 } else { 9080 });
        if let Some(brokers) = &args.kafka_brokers {
            options.kafka_brokers = resolve_brokers(brokers).await?;
        }
        let app = Bookinfo::start(options)
            .await
            .map_err(|error| error.to_string())?;
        print_urls(&app, scenario);
        match args.demo {
            Some(duration) => {
                println!("\ndriving traffic for {:.0} s...\n", duration.as_secs_f64());
                let summary = bookinfo::demo::run(&app, duration).await;
                println!("{summary}");
            }
            None => {
                println!("\nCtrl-C to stop.");
                tokio::signal::ctrl_c()
                    .await
                    .map_err(|error| format!("cannot wait for Ctrl-C: {error}"))?;
            }
        }
        app.stop().await;
        Ok(())
    });
    // Kafka clients finish their last flush on threads of their own; do not wait for them long.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

async fn resolve_brokers(list: &str) -> Result<Vec<SocketAddr>, String> {
    let mut brokers = Vec::new();
    for broker in list
        .split(',')
        .map(str::trim)
        .filter(|broker| !broker.is_empty())
    {
        let found = tokio::net::lookup_host(broker)
            .await
            .map_err(|error| format!("--kafka-brokers {broker}: {error} (expected host:port)"))?;
        brokers.extend(found);
    }
    if brokers.is_empty() {
        return Err(format!("--kafka-brokers {list:?}: no broker address"));
    }
    Ok(brokers)
}

fn print_urls(app: &Bookinfo, scenario: &scenario::Scenario) {
    let ingress = app.ingress_addr();
    println!(
        "Bookinfo on meshlib: every workload with its own SPIFFE identity, strict mTLS inside\n"
    );
    println!("  product page   http://{ingress}/productpage");
    println!("  as jason       http://{ingress}/login?user=jason");
    println!("  JSON API       http://{ingress}/api/v1/products/0");
    println!("  analytics      http://{ingress}/analytics/views");
    println!("\n  workload       serves (mTLS)       admin dashboard");
    for workload in app.workloads() {
        println!(
            "  {:<14} {:<19} http://{}/",
            workload.name(),
            workload.addr(),
            workload.admin_addr()
        );
    }
    println!(
        "\n  routes         {} ({}); switch with\n                   cargo run --release -p bookinfo -- scenario <name>",
        scenario.name, scenario.summary
    );
    println!("  configuration  {}", app.mesh_file().display());
    println!("  certificates   {}", app.certs_dir().display());
    match app.embedded_kafka() {
        Some(brokers) => println!("  kafka          embedded cluster at {brokers}"),
        None => println!("  kafka          the brokers of --kafka-brokers"),
    }
}
