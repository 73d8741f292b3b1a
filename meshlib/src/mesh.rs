use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use crate::config::{ConfigError, DiscoveryConfig, MeshConfig, ServiceConfig};
use crate::discovery::{DnsResolver, FileRegistry, Resolver, StaticResolver};
use crate::http::HttpClient;
use crate::identity::{Identity, IdentityError};
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
    identity: Option<Identity>,
    resolvers: HashMap<String, Arc<dyn Resolver>>,
    registries: Mutex<HashMap<PathBuf, FileRegistry>>,
    clients: Mutex<HashMap<String, HttpClient>>,
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
    identity: Option<Identity>,
}

impl fmt::Debug for MeshBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeshBuilder")
            .field("config", &self.config)
            .field("resolvers", &self.resolvers.keys())
            .field("identity", &self.identity)
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

    /// Uses `identity` as this process's workload identity instead of the files `[identity]`
    /// names (for an identity from PEM given in code, or one shared by several meshes).
    pub fn identity(mut self, identity: Identity) -> Self {
        self.identity = Some(identity);
        self
    }

    /// Validates the configuration, reads the identity's files, and builds the mesh.
    pub fn build(self) -> Result<Mesh, Error> {
        let config = self.config;
        config
            .validate_with_identity(self.identity.is_some() || config.identity.is_some())
            .map_err(Error::config)?;
        for (name, service) in &config.services {
            if service.discovery.is_none() && !self.resolvers.contains_key(name) {
                return Err(Error::config(ConfigError::new(
                    format!("services.{name}.discovery"),
                    "is missing, and no resolver was given for this service in code",
                )));
            }
        }
        // Read last, so that a configuration error starts no file watcher.
        let identity = match (self.identity, &config.identity) {
            (Some(identity), _) => Some(identity),
            (None, Some(files)) => Some(Identity::from_config(files).map_err(identity_error)?),
            (None, None) => None,
        };
        Ok(Mesh {
            inner: Arc::new(Inner {
                config,
                identity,
                resolvers: self.resolvers,
                registries: Mutex::default(),
                clients: Mutex::default(),
            }),
        })
    }
}

impl Mesh {
    /// Starts building a mesh from `config`.
    pub fn builder(config: MeshConfig) -> MeshBuilder {
        MeshBuilder {
            config,
            resolvers: HashMap::new(),
            identity: None,
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

    /// This process's workload identity, when it has one.
    pub fn identity(&self) -> Option<&Identity> {
        self.inner.identity.as_ref()
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
        let client = outbound::http(service, config, self.inner.identity.as_ref(), changes);
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
        crate::inbound::Server::new(name, config, self.inner.identity.as_ref())
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

/// An identity that cannot be loaded, as a configuration error at the key naming its file.
fn identity_error(error: IdentityError) -> Error {
    Error::config(ConfigError::new(
        format!("identity.{}", error.part().key()),
        error,
    ))
}
