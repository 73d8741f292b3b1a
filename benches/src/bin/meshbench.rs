//! `meshbench <scenario> [--quick]`: runs one load scenario against meshlib and prints its
//! figures as JSON lines. `meshbench --help` lists the scenarios.

use std::process::ExitCode;

use meshlib_benches::alloc::CountingAlloc;
use meshlib_benches::{Options, scenarios, serve};

// Installed for the memory and allocation figures (`lb-scale`, `overhead`); it counts nothing
// until a scenario starts it.
#[global_allocator]
static ALLOCATOR: CountingAlloc = CountingAlloc;

/// Usage errors exit with 2, as is the custom for command-line tools; a failed scenario with 1.
const USAGE_ERROR: u8 = 2;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(serve::SUBCOMMAND) {
        return match serve::run(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("meshbench serve: {error}");
                ExitCode::FAILURE
            }
        };
    }

    let mut options = Options::default();
    let mut name = None;
    for arg in &args {
        match arg.as_str() {
            "--quick" => options.quick = true,
            "-h" | "--help" => {
                println!("{}", usage());
                return ExitCode::SUCCESS;
            }
            flag if flag.starts_with('-') => {
                eprintln!("meshbench: unknown option {flag:?}\n\n{}", usage());
                return ExitCode::from(USAGE_ERROR);
            }
            scenario if name.is_none() => name = Some(scenario),
            extra => {
                eprintln!(
                    "meshbench: one scenario at a time (also got {extra:?})\n\n{}",
                    usage()
                );
                return ExitCode::from(USAGE_ERROR);
            }
        }
    }
    let Some(name) = name else {
        eprintln!("meshbench: which scenario?\n\n{}", usage());
        return ExitCode::from(USAGE_ERROR);
    };
    let Some(scenario) = scenarios::find(name) else {
        eprintln!("meshbench: unknown scenario {name:?}\n\n{}", usage());
        return ExitCode::from(USAGE_ERROR);
    };
    match (scenario.run)(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("meshbench {name}: {error}");
            ExitCode::FAILURE
        }
    }
}

fn usage() -> String {
    let mut text = String::from(
        "usage: meshbench <scenario> [--quick]\n\n\
         Prints one JSON object per line. --quick keeps each scenario under 30 s.\n\n\
         scenarios:\n",
    );
    let width = scenarios::ALL
        .iter()
        .map(|s| s.name.len())
        .max()
        .unwrap_or(0);
    for scenario in scenarios::ALL {
        text.push_str(&format!("  {:width$}  {}\n", scenario.name, scenario.about));
    }
    text
}
