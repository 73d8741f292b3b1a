//! The mesh configuration the application runs: `mesh.toml` (services, identities,
//! authorization, Kafka) plus the routes of one scenario, the Istio task equivalents in
//! `scenarios/*.toml`.
//!
//! The application follows the file it runs (`<state dir>/mesh.toml`), so writing another
//! scenario there, or editing it, changes the routes of the running application: the mesh
//! reloads it within a few milliseconds, requests in flight finish under the old routes.

use std::path::Path;

/// `mesh.toml`: everything but the routes.
pub const BASE: &str = include_str!("../mesh.toml");

/// A set of routes to run with [`BASE`].
#[derive(Debug)]
pub struct Scenario {
    /// What `--scenario` and `bookinfo scenario` take.
    pub name: &'static str,
    /// One line for listings.
    pub summary: &'static str,
    /// The routes, TOML tables to append to [`BASE`].
    pub routes: &'static str,
}

impl Scenario {
    /// Its file, `scenarios/<name>.toml`, as the head of the running configuration names it.
    pub fn file(&self) -> String {
        format!("scenarios/{}.toml", self.name)
    }
}

/// Every scenario, in the order of Istio's tasks.
pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "default",
        summary: "no routes: reviews v1, v2 and v3 in turn",
        routes: include_str!("../scenarios/default.toml"),
    },
    Scenario {
        name: "all-v1",
        summary: "request routing: every request to reviews v1",
        routes: include_str!("../scenarios/all-v1.toml"),
    },
    Scenario {
        name: "jason-v2",
        summary: "header routing: end-user jason to reviews v2, everybody else to v1",
        routes: include_str!("../scenarios/jason-v2.toml"),
    },
    Scenario {
        name: "jason-delay",
        summary: "fault injection: jason to v2, whose ratings calls are held 7 s (productpage waits 3 s)",
        routes: include_str!("../scenarios/jason-delay.toml"),
    },
    Scenario {
        name: "canary-v3",
        summary: "traffic shifting: reviews v1 and v3, 50% each",
        routes: include_str!("../scenarios/canary-v3.toml"),
    },
    Scenario {
        name: "all-v3",
        summary: "traffic shifting done: every request to reviews v3",
        routes: include_str!("../scenarios/all-v3.toml"),
    },
];

/// The scenario called `name`.
pub fn find(name: &str) -> Result<&'static Scenario, UnknownScenario> {
    SCENARIOS
        .iter()
        .find(|scenario| scenario.name == name)
        .ok_or_else(|| UnknownScenario(name.to_owned()))
}

/// A scenario name that is not one of [`SCENARIOS`].
#[derive(Debug, thiserror::Error)]
#[error("no scenario `{0}`; the scenarios are: {names}", names = names())]
pub struct UnknownScenario(String);

fn names() -> String {
    SCENARIOS
        .iter()
        .map(|scenario| scenario.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The configuration [`BASE`] plus `routes`, headed by where it came from (`origin`).
pub fn mesh_toml(routes: &str, origin: &str) -> String {
    format!(
        "# Written by bookinfo: examples/bookinfo/mesh.toml plus {origin}.\n\
         # The running application follows this file: edit it, or switch with\n\
         #   cargo run --release -p bookinfo -- scenario <name>\n\n\
         {BASE}\n# --- Routes: {origin} ---\n\n{routes}"
    )
}

/// Writes `contents` to `path` as editors do, aside and then renamed into place, so that the
/// mesh never reads half a file.
pub fn write(path: &Path, contents: &str) -> std::io::Result<()> {
    let mut aside = path.as_os_str().to_owned();
    aside.push(".tmp");
    std::fs::write(&aside, contents)?;
    std::fs::rename(&aside, path)
}

#[cfg(test)]
mod tests {
    use meshlib::MeshConfig;

    use super::*;

    #[test]
    fn every_scenario_is_a_valid_configuration_with_its_own_routes() {
        let base = MeshConfig::from_toml(BASE).unwrap();
        for scenario in SCENARIOS {
            let config = MeshConfig::from_toml(&mesh_toml(scenario.routes, &scenario.file()))
                .unwrap_or_else(|error| panic!("{}: {error}", scenario.name));
            let routes = |config: &MeshConfig| {
                (
                    config.services["reviews"].routes.clone(),
                    config.services["ratings"].routes.clone(),
                )
            };
            assert_eq!(
                routes(&config) == routes(&base),
                scenario.name == "default",
                "{}",
                scenario.name
            );
        }
    }

    #[test]
    fn an_unknown_scenario_names_the_known_ones() {
        let error = find("all-v4").unwrap_err().to_string();
        assert!(
            error.contains("`all-v4`") && error.contains("canary-v3"),
            "{error}"
        );
    }
}
