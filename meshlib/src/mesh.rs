use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use crate::config::{ConfigError, DiscoveryConfig, MeshConfig, ServiceConfig};
use crate::discovery::{DnsResolver, FileRegistry, Resolver, StaticResolver};
use crate::http::HttpClient;
use crate::telemetry::{ServerTelemetryLayer, Telemetry};
use crate::{Error, outbound};

/// The mesh as one process sees it: built once, it hands out clients for destination services.
///
/// Cheap to clone. Clients for the same service share one balancer and connection pool, however
/// many times they are asked for.
#[derive(Clone)]
pub struct Mesh {
    inner: Arc<Inner>,
}

struct Inner {
    config: MeshConfig,
    resolvers: HashMap<String, Arc<dyn Resolver>>,
    registries: Mutex<HashMap<PathBuf, FileRegistry>>,
    /// Every client handed out, by service: what the admin endpoint reports on.
    clients: Mutex<HashMap<String, HttpClient>>,
    /// The telemetry of every server handed out, by name, so that a server's counts survive
    /// being asked for twice and the admin endpoint can report them.
    servers: Mutex<HashMap<String, ServerTelemetryLayer>>,
    telemetry: Arc<Telemetry>,
}

impl fmt::Debug for Mesh {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mesh")
            .field("services", &self.inner.config.services.keys())
            .finish_non_exhaustive()
    }
}

/// Builds a [`Mesh`] from configuration plus resolvers given in code.
#[must_use]
pub struct MeshBuilder {
    config: MeshConfig,
    resolvers: HashMap<String, Arc<dyn Resolver>>,
    tracer_provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl fmt::Debug for MeshBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeshBuilder")
            .field("config", &self.config)
            .field("resolvers", &self.resolvers.keys())
            .finish()
    }
}

impl MeshBuilder {
    /// Discovers `service` with `resolver` instead of what the configuration says. A service the
    /// configuration does not name is added with default settings.
    pub fn resolver(mut self, service: &str, resolver: impl Resolver) -> Self {
        self.config.services.entry(service.to_owned()).or_default();
        self.resolvers
            .insert(service.to_owned(), Arc::new(resolver));
        self
    }

    /// Sends the mesh's spans to `provider` instead of the exporter the configuration names
    /// (whose sampling ratio then does not apply either: the provider has its own sampler). For
    /// an application that sets up OpenTelemetry itself, and for tests with an in-memory
    /// exporter.
    pub fn tracer_provider(
        mut self,
        provider: opentelemetry_sdk::trace::SdkTracerProvider,
    ) -> Self {
        self.tracer_provider = Some(provider);
        self
    }

    /// Validates the configuration and builds the mesh.
    pub fn build(self) -> Result<Mesh, Error> {
        self.config.validate().map_err(Error::config)?;
        for (name, service) in &self.config.services {
            if service.discovery.is_none() && !self.resolvers.contains_key(name) {
                return Err(Error::config(ConfigError::new(
                    format!("services.{name}.discovery"),
                    "is missing, and no resolver was given for this service in code",
                )));
            }
        }
        let telemetry =
            Telemetry::new(&self.config.telemetry, self.tracer_provider).map_err(Error::config)?;
        Ok(Mesh {
            inner: Arc::new(Inner {
                config: self.config,
                resolvers: self.resolvers,
                registries: Mutex::default(),
                clients: Mutex::default(),
                servers: Mutex::default(),
                telemetry: Arc::new(telemetry),
            }),
        })
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Mesh {
    /// Starts building a mesh from `config`.
    pub fn builder(config: MeshConfig) -> MeshBuilder {
        MeshBuilder {
            config,
            resolvers: HashMap::new(),
            tracer_provider: None,
        }
    }

    /// A mesh from a validated configuration.
    pub fn new(config: MeshConfig) -> Result<Self, Error> {
        Self::builder(config).build()
    }

    /// A mesh from a configuration file (TOML, or JSON when the name ends in `.json`).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, Error> {
        Self::new(MeshConfig::from_file(path).map_err(Error::config)?)
    }

    /// The configuration the mesh runs with.
    pub fn config(&self) -> &MeshConfig {
        &self.inner.config
    }

    /// The HTTP client for `service`, created on first use.
    ///
    /// Must be called from within a tokio runtime: discovery for the service starts here.
    pub fn http_client(&self, service: &str) -> Result<HttpClient, Error> {
        let mut clients = self
            .inner
            .clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(client) = clients.get(service) {
            return Ok(client.clone());
        }
        let config = self
            .inner
            .config
            .services
            .get(service)
            .ok_or_else(|| Error::unknown_service(service))?;
        let changes = self.resolver(service, config)?.resolve(service);
        let client = outbound::http(service, config, changes, &self.inner.telemetry);
        clients.insert(service.to_owned(), client.clone());
        Ok(client)
    }

    /// The inbound [`Server`](crate::inbound::Server) for `name`, one of this process's own
    /// services, configured by `[servers.<name>]` (defaults when the configuration has none).
    pub fn server(&self, name: &str) -> crate::inbound::Server {
        let config = self
            .inner
            .config
            .servers
            .get(name)
            .cloned()
            .unwrap_or_default();
        let telemetry = lock(&self.inner.servers)
            .entry(name.to_owned())
            .or_insert_with(|| ServerTelemetryLayer::new(name, &self.inner.telemetry))
            .clone();
        crate::inbound::Server::new(name, config).with_telemetry(telemetry)
    }

    /// The clients handed out so far, by service name.
    pub(crate) fn clients(&self) -> Vec<HttpClient> {
        let mut clients: Vec<_> = lock(&self.inner.clients).values().cloned().collect();
        clients.sort_by(|a, b| a.service().cmp(b.service()));
        clients
    }

    /// The telemetry of the servers handed out so far, by name.
    pub(crate) fn servers(&self) -> Vec<(String, ServerTelemetryLayer)> {
        let mut servers: Vec<_> = lock(&self.inner.servers)
            .iter()
            .map(|(name, layer)| (name.clone(), layer.clone()))
            .collect();
        servers.sort_by(|a, b| a.0.cmp(&b.0));
        servers
    }

    /// Exports the spans that are finished and not exported yet, and waits until the exporter
    /// has sent them: before a process exits, or before a test reads an exporter.
    ///
    /// Blocks the calling thread; from async code, call it with `spawn_blocking`.
    pub fn flush_telemetry(&self) {
        self.inner.telemetry.flush();
    }

    fn resolver(&self, service: &str, config: &ServiceConfig) -> Result<Arc<dyn Resolver>, Error> {
        if let Some(resolver) = self.inner.resolvers.get(service) {
            return Ok(Arc::clone(resolver));
        }
        let resolver: Arc<dyn Resolver> = match &config.discovery {
            Some(DiscoveryConfig::Static { endpoints }) => Arc::new(StaticResolver::new(
                endpoints.iter().map(|endpoint| endpoint.to_endpoint()),
            )),
            Some(DiscoveryConfig::Dns {
                name,
                record,
                port,
                nameservers,
                min_ttl,
                max_ttl,
            }) => Arc::new(
                DnsResolver::new(
                    name.clone(),
                    *record,
                    *port,
                    nameservers.clone(),
                    *min_ttl,
                    *max_ttl,
                )
                .map_err(|error| {
                    Error::config(ConfigError::new(
                        format!("services.{service}.discovery"),
                        error,
                    ))
                })?,
            ),
            Some(DiscoveryConfig::File { path }) => {
                let mut registries = self
                    .inner
                    .registries
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                // One watcher per file, however many services it lists.
                Arc::new(
                    registries
                        .entry(path.clone())
                        .or_insert_with(|| FileRegistry::new(path.clone()))
                        .clone(),
                )
            }
            None => unreachable!("build() checks that every service has discovery"),
        };
        Ok(resolver)
    }
}
