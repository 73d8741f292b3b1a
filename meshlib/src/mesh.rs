use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use arc_swap::ArcSwap;

use crate::config::{ConfigError, DiscoveryConfig, MeshConfig};
use crate::discovery::{Changes, DnsResolver, FileRegistry, Resolver, StaticResolver};
use crate::http::HttpClient;
use crate::identity::{Identity, IdentityError};
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
    config: ArcSwap<MeshConfig>,
    identity: Option<Identity>,
    resolvers: HashMap<String, Arc<dyn Resolver>>,
    registries: Mutex<HashMap<PathBuf, FileRegistry>>,
    /// Every client handed out, by service; also what a reload reconfigures.
    clients: Mutex<HashMap<String, HttpClient>>,
    /// The telemetry of every server handed out, by name, so that a server's counts survive
    /// being asked for twice and the admin endpoint can report them.
    servers: Mutex<HashMap<String, ServerTelemetryLayer>>,
    telemetry: Arc<Telemetry>,
    /// The task following the configuration file, if the mesh was built to follow one.
    watcher: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(watcher) = self
            .watcher
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            watcher.abort();
        }
    }
}

/// A handle on the mesh that does not keep it alive, for parts of it that need other clients
/// (a route's mirror).
#[derive(Clone)]
pub(crate) struct MeshHandle(Weak<Inner>);

impl MeshHandle {
    /// The client for `service`, if the mesh is still there and knows the service.
    pub(crate) fn http_client(&self, service: &str) -> Option<HttpClient> {
        let mesh = Mesh {
            inner: self.0.upgrade()?,
        };
        match mesh.http_client(service) {
            Ok(client) => Some(client),
            Err(error) => {
                tracing::warn!(service, %error, "no client for a mirrored service");
                None
            }
        }
    }
}

impl fmt::Debug for Mesh {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mesh")
            .field("services", &self.inner.config.load().services.keys())
            .finish_non_exhaustive()
    }
}

/// Builds a [`Mesh`] from configuration plus resolvers given in code.
#[must_use]
pub struct MeshBuilder {
    config: MeshConfig,
    resolvers: HashMap<String, Arc<dyn Resolver>>,
    identity: Option<Identity>,
    tracer_provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
    /// The configuration file the built mesh follows, if it came from one to follow.
    watched: Option<PathBuf>,
}

impl fmt::Debug for MeshBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeshBuilder")
            .field("config", &self.config)
            .field("resolvers", &self.resolvers.keys())
            .field("identity", &self.identity)
            .field("watched", &self.watched)
            .finish()
    }
}

impl MeshBuilder {
    /// Discovers `service` (or the Kafka cluster of that name) with `resolver` instead of what
    /// the configuration says. A name the configuration does not know is added as a service with
    /// default settings.
    pub fn resolver(mut self, service: &str, resolver: impl Resolver) -> Self {
        if !self.config.kafka.contains_key(service) {
            self.config.services.entry(service.to_owned()).or_default();
        }
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

    /// Uses `identity` as this process's workload identity instead of the files `[identity]`
    /// names (for an identity from PEM given in code, or one shared by several meshes).
    pub fn identity(mut self, identity: Identity) -> Self {
        self.identity = Some(identity);
        self
    }

    /// Validates the configuration, reads the identity's files, and builds the mesh; one from
    /// [`Mesh::builder_from_file_watched`] starts following its file (and must then be built
    /// within a tokio runtime).
    pub fn build(self) -> Result<Mesh, Error> {
        let has_identity = self.identity.is_some() || self.config.identity.is_some();
        check(&self.config, &self.resolvers, has_identity)?;
        let config = self.config;
        // Read last, so that a configuration error starts no file watcher.
        let identity = match (self.identity, &config.identity) {
            (Some(identity), _) => Some(identity),
            (None, Some(files)) => Some(Identity::from_config(files).map_err(identity_error)?),
            (None, None) => None,
        };
        let telemetry =
            Telemetry::new(&config.telemetry, self.tracer_provider).map_err(Error::config)?;
        let mesh = Mesh {
            inner: Arc::new(Inner {
                config: ArcSwap::from_pointee(config),
                identity,
                resolvers: self.resolvers,
                registries: Mutex::default(),
                clients: Mutex::default(),
                watcher: Mutex::default(),
                servers: Mutex::default(),
                telemetry: Arc::new(telemetry),
            }),
        };
        if let Some(path) = self.watched {
            let watcher = tokio::spawn(follow(path, mesh.handle()));
            *lock(&mesh.inner.watcher) = Some(watcher);
        }
        Ok(mesh)
    }
}

/// Validation, plus what only the mesh can check: that every service can be discovered.
fn check(
    config: &MeshConfig,
    resolvers: &HashMap<String, Arc<dyn Resolver>>,
    has_identity: bool,
) -> Result<(), Error> {
    config
        .validate_with_identity(has_identity)
        .map_err(Error::config)?;
    for (name, service) in &config.services {
        if service.discovery.is_none() && !resolvers.contains_key(name) {
            return Err(Error::config(ConfigError::new(
                format!("services.{name}.discovery"),
                "is missing, and no resolver was given for this service in code",
            )));
        }
    }
    for (name, cluster) in &config.kafka {
        if cluster.discovery.is_none() && !resolvers.contains_key(name) {
            return Err(Error::config(ConfigError::new(
                format!("kafka.{name}.discovery"),
                "is missing, and no resolver was given for this cluster in code",
            )));
        }
    }
    Ok(())
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
            identity: None,
            tracer_provider: None,
            watched: None,
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

    /// A mesh from a configuration file that it then follows: each valid edit applies to new
    /// requests at once while requests in flight finish under the old one; an invalid edit is
    /// logged and ignored, and the last good configuration stays.
    ///
    /// Must be called from within a tokio runtime. The file is followed until the mesh and
    /// every clone of it are dropped.
    pub fn from_file_watched(path: impl AsRef<Path>) -> Result<Self, Error> {
        Self::builder_from_file_watched(path)?.build()
    }

    /// Starts building a mesh from a configuration file that the mesh will follow as
    /// [`Mesh::from_file_watched`] does, with parts given in code: an identity, resolvers, a
    /// tracer provider. Several processes' worth of meshes can so share one file (each its own
    /// identity), and a reload keeps what was given in code.
    pub fn builder_from_file_watched(path: impl AsRef<Path>) -> Result<MeshBuilder, Error> {
        let path = path.as_ref().to_path_buf();
        let mut builder = Self::builder(MeshConfig::from_file(&path).map_err(Error::config)?);
        builder.watched = Some(path);
        Ok(builder)
    }

    /// The configuration the mesh runs with now.
    pub fn config(&self) -> Arc<MeshConfig> {
        self.inner.config.load_full()
    }

    /// Replaces the configuration. It is validated first and, if invalid, refused whole with
    /// the error; otherwise new requests use it at once, requests in flight finish under the old
    /// one, and each service keeps its endpoints, load estimates and connections unless the
    /// settings they depend on changed.
    pub fn reload(&self, config: MeshConfig) -> Result<(), Error> {
        check(
            &config,
            &self.inner.resolvers,
            self.inner.identity.is_some(),
        )?;
        let clients = self
            .inner
            .clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let old = self.inner.config.load_full();
        let mut changed = Vec::new();
        for (name, client) in clients.iter() {
            let Some(service) = config.services.get(name) else {
                // A client already handed out keeps working with its last configuration.
                continue;
            };
            if old.services.get(name) == Some(service) && old.zone == config.zone {
                continue;
            }
            let identity = self.inner.identity.as_ref();
            client.reconfigure(
                service,
                config.zone.as_deref(),
                identity,
                self.handle(),
                || {
                    self.resolver(name, "services", service.discovery.as_ref())
                        .map(|resolver| resolver.resolve(name))
                },
            )?;
            changed.push(name.as_str());
        }
        self.inner.config.store(Arc::new(config));
        tracing::info!(services = ?changed, "configuration reloaded");
        Ok(())
    }

    fn handle(&self) -> MeshHandle {
        MeshHandle(Arc::downgrade(&self.inner))
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
        let mesh = self.inner.config.load();
        let config = mesh
            .services
            .get(service)
            .ok_or_else(|| Error::unknown_service(service))?;
        let changes = self
            .resolver(service, "services", config.discovery.as_ref())?
            .resolve(service);
        let client = outbound::http(
            service,
            config,
            mesh.zone.as_deref(),
            self.inner.identity.as_ref(),
            changes,
            self.handle(),
            &self.inner.telemetry,
        );
        clients.insert(service.to_owned(), client.clone());
        Ok(client)
    }

    /// The inbound [`Server`](crate::inbound::Server) for `name`, one of this process's own
    /// services, configured by `[servers.<name>]` (defaults when the configuration has none).
    pub fn server(&self, name: &str) -> crate::inbound::Server {
        let config = self
            .inner
            .config
            .load()
            .servers
            .get(name)
            .cloned()
            .unwrap_or_default();
        let telemetry = lock(&self.inner.servers)
            .entry(name.to_owned())
            .or_insert_with(|| ServerTelemetryLayer::new(name, &self.inner.telemetry))
            .clone();
        crate::inbound::Server::new(name, config, self.inner.identity.as_ref())
            .with_telemetry(telemetry)
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

    /// The tracer this mesh makes its spans with; `None` with tracing off. For integrations that
    /// make spans of their own, such as meshlib-kafka's `send` and `process` spans, so that they
    /// are sampled, exported and flushed with the mesh's.
    pub fn tracer(&self) -> Option<crate::telemetry::otel::opentelemetry_sdk::trace::SdkTracer> {
        self.inner.telemetry.tracer().cloned()
    }

    /// Exports the spans that are finished and not exported yet, and waits until the exporter
    /// has sent them: before a process exits, or before a test reads an exporter.
    ///
    /// Blocks the calling thread; from async code, call it with `spawn_blocking`.
    pub fn flush_telemetry(&self) {
        self.inner.telemetry.flush();
    }

    /// The endpoint changes of the Kafka cluster `name` (`[kafka.<name>]`), from its configured
    /// discovery or the resolver given in code under that name: where its bootstrap brokers are.
    ///
    /// Must be called from within a tokio runtime: discovery starts here.
    pub fn kafka_brokers(&self, name: &str) -> Result<Changes, Error> {
        let config = self.inner.config.load();
        let cluster = config
            .kafka
            .get(name)
            .ok_or_else(|| Error::unknown_service(name))?;
        Ok(self
            .resolver(name, "kafka", cluster.discovery.as_ref())?
            .resolve(name))
    }

    /// The resolver of `service`: the one given in code, or one built from `discovery`, the
    /// table at `{section}.{service}.discovery`.
    fn resolver(
        &self,
        service: &str,
        section: &str,
        discovery: Option<&DiscoveryConfig>,
    ) -> Result<Arc<dyn Resolver>, Error> {
        if let Some(resolver) = self.inner.resolvers.get(service) {
            return Ok(Arc::clone(resolver));
        }
        let resolver: Arc<dyn Resolver> = match discovery {
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
                        format!("{section}.{service}.discovery"),
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

/// Follows the configuration file at `path`, reloading the mesh on each valid edit.
async fn follow(path: PathBuf, mesh: MeshHandle) {
    let mut watch = crate::watch::FileWatch::new(path.clone());
    loop {
        // The first report comes at once, when the watch is set up. The file is read then too:
        // an edit made since the mesh read it (before the watch existed) made no event, and
        // would otherwise wait for the periodic read. An unchanged file is a no-op below.
        watch.changed().await;
        let Some(inner) = mesh.0.upgrade() else {
            return;
        };
        let mesh = Mesh { inner };
        let read = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || MeshConfig::from_file(path)).await
        };
        let Ok(read) = read else { return };
        match read {
            Ok(config) if *mesh.config() == config => {}
            Ok(config) => {
                if let Err(error) = mesh.reload(config) {
                    tracing::error!(path = %path.display(), %error, "configuration edit refused; keeping the last good one");
                }
            }
            Err(error) => {
                tracing::error!(path = %path.display(), %error, "configuration edit refused; keeping the last good one");
            }
        }
    }
}

/// An identity that cannot be loaded, as a configuration error at the key naming its file.
fn identity_error(error: IdentityError) -> Error {
    Error::config(ConfigError::new(
        format!("identity.{}", error.part().key()),
        error,
    ))
}
