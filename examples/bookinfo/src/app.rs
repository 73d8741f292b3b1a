//! Starting the whole application in this process: a development CA and an identity per
//! workload, a listener per workload on loopback, a mesh per workload following one
//! configuration file, the Kafka cluster, and an admin endpoint per workload.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use meshlib::discovery::{Endpoint, StaticResolver};
use meshlib::identity::{DevCa, Identity};
use meshlib::{Admin, Body, Mesh, MeshConfig};
use meshlib_kafka::{EmbeddedCluster, KafkaCluster, Record};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::analytics::Analytics;
use crate::details;
use crate::ingress::Ingress;
use crate::productpage::ProductPage;
use crate::ratings::{self, RatingsServer};
use crate::reviews::{Reviews, Version};
use crate::scenario::{self, Scenario};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Makes the tracer provider of a workload, given its name (its `service.name`).
pub type TracerProviders = Arc<dyn Fn(&str) -> SdkTracerProvider + Send + Sync>;

/// The trust domain of every identity.
pub const TRUST_DOMAIN: &str = "cluster.local";

/// The namespace of every identity: `spiffe://cluster.local/ns/bookinfo/sa/<service>`.
pub const NAMESPACE: &str = "bookinfo";

/// How to start the application.
#[derive(Clone)]
pub struct Options {
    /// Where the running configuration (`mesh.toml`) and the certificates (`certs/`) go.
    pub state_dir: PathBuf,
    /// The ingress listens on this port, the other workloads on the next ones, and the admin
    /// endpoints on the same ports plus 100; 0 picks free ports for all.
    pub base_port: u16,
    /// The routes to start with ([`scenario::Scenario::routes`], or any route tables).
    pub routes: String,
    /// Where `routes` came from, for the head of the written file.
    pub routes_origin: String,
    /// A real Kafka cluster's bootstrap brokers; the embedded cluster when empty.
    pub kafka_brokers: Vec<SocketAddr>,
    /// Each workload's tracer provider; when `None`, providers that keep spans nowhere (trace
    /// context still flows, and trace ids are shown).
    pub tracer_providers: Option<TracerProviders>,
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("state_dir", &self.state_dir)
            .field("base_port", &self.base_port)
            .field("routes_origin", &self.routes_origin)
            .field("kafka_brokers", &self.kafka_brokers)
            .finish_non_exhaustive()
    }
}

impl Options {
    /// Scenario `default`, free ports, the embedded Kafka cluster, state in `state_dir`.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        let default = &scenario::SCENARIOS[0];
        Self {
            state_dir: state_dir.into(),
            base_port: 0,
            routes: default.routes.to_owned(),
            routes_origin: default.file(),
            kafka_brokers: Vec::new(),
            tracer_providers: None,
        }
    }

    /// Starts with the routes of `scenario`.
    #[must_use]
    pub fn scenario(mut self, scenario: &Scenario) -> Self {
        self.routes = scenario.routes.to_owned();
        self.routes_origin = scenario.file();
        self
    }
}

/// Why the application did not start, or a scenario did not apply.
#[derive(Debug, thiserror::Error)]
#[error("{context}: {source}")]
pub struct Error {
    context: String,
    source: BoxError,
}

fn error<E: Into<BoxError>>(context: impl fmt::Display) -> impl FnOnce(E) -> Error {
    move |source| Error {
        context: context.to_string(),
        source: source.into(),
    }
}

/// One running workload.
#[derive(Debug)]
pub struct Workload {
    name: &'static str,
    addr: SocketAddr,
    mesh: Mesh,
    admin: Admin,
}

impl Workload {
    /// Its name: `ingress`, `productpage`, `details`, `reviews-v1`...
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Where it serves.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its admin endpoint (dashboard, metrics, endpoints, config).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.addr()
    }

    /// Its mesh.
    pub fn mesh(&self) -> &Mesh {
        &self.mesh
    }
}

/// The running application; it stops when dropped.
pub struct Bookinfo {
    workloads: Vec<Workload>,
    analytics: Analytics,
    mesh_file: PathBuf,
    certs_dir: PathBuf,
    kafka: Option<EmbeddedBrokers>,
    tasks: JoinSet<()>,
}

impl fmt::Debug for Bookinfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bookinfo")
            .field("workloads", &self.workloads)
            .field("mesh_file", &self.mesh_file)
            .finish_non_exhaustive()
    }
}

/// The workloads, in port order, with the identity (service account) each proves.
const WORKLOADS: [(&str, &str); 8] = [
    ("ingress", "ingress"),
    ("productpage", "productpage"),
    ("details", "details"),
    ("reviews-v1", "reviews"),
    ("reviews-v2", "reviews"),
    ("reviews-v3", "reviews"),
    ("ratings", "ratings"),
    ("analytics", "analytics"),
];

/// The admin endpoints listen this far above the workloads.
const ADMIN_PORT_OFFSET: u16 = 100;

/// How long a switch waits for every workload to run the new configuration.
const RELOAD_WAIT: Duration = Duration::from_secs(10);

/// The state directory's list of admin endpoints, `<workload> <address>` a line: where
/// [`switch_running`] asks each workload which configuration it runs.
const ADMINS_FILE: &str = "admin-endpoints";

impl Bookinfo {
    /// Starts every workload; returns once all serve. Must be called within a multi-threaded
    /// tokio runtime.
    pub async fn start(options: Options) -> Result<Self, Error> {
        let mut listeners = Vec::new();
        for (i, (name, _)) in WORKLOADS.iter().enumerate() {
            let listener = bind(name, port(options.base_port, i)?).await?;
            listeners.push(listener);
        }
        let addrs: Vec<SocketAddr> = listeners
            .iter()
            .map(|listener| {
                listener
                    .local_addr()
                    .expect("a bound listener has an address")
            })
            .collect();
        let at = |name: &str| {
            addrs[WORKLOADS
                .iter()
                .position(|(n, _)| *n == name)
                .expect("a workload")]
        };

        // Written once the ports are ours: a second copy that cannot listen must not change
        // the files of the one running.
        let certs_dir = options.state_dir.join("certs");
        std::fs::create_dir_all(&certs_dir)
            .map_err(error(format!("cannot create {}", certs_dir.display())))?;
        let mesh_file = options.state_dir.join("mesh.toml");
        scenario::write(
            &mesh_file,
            &scenario::mesh_toml(&options.routes, &options.routes_origin),
        )
        .map_err(error(format!("cannot write {}", mesh_file.display())))?;
        let identities = issue_identities(&certs_dir)?;

        let kafka = if options.kafka_brokers.is_empty() {
            Some(EmbeddedBrokers::start()?)
        } else {
            None
        };
        let brokers = match &kafka {
            Some(embedded) => embedded.brokers.clone(),
            None => options.kafka_brokers.clone(),
        };

        // Where every service is, as a platform's discovery would say.
        let mut endpoints: BTreeMap<&str, Vec<Endpoint>> = BTreeMap::new();
        for name in ["productpage", "details", "ratings", "analytics"] {
            endpoints.insert(name, vec![Endpoint::new(at(name))]);
        }
        endpoints.insert(
            "reviews",
            Version::ALL
                .iter()
                .map(|version| {
                    Endpoint::new(at(&format!("reviews-{}", version.label())))
                        .with_label("version", version.label())
                })
                .collect(),
        );
        endpoints.insert("events", brokers.into_iter().map(Endpoint::new).collect());

        let mut meshes = Vec::new();
        for (name, account) in WORKLOADS {
            let mut builder = Mesh::builder_from_file_watched(&mesh_file)
                .map_err(error(mesh_file.display()))?
                .identity(identities[account].clone())
                .tracer_provider(match &options.tracer_providers {
                    Some(providers) => providers(name),
                    None => SdkTracerProvider::builder()
                        .with_resource(Resource::builder().with_service_name(name).build())
                        .build(),
                });
            for (service, endpoints) in &endpoints {
                builder = builder.resolver(service, StaticResolver::new(endpoints.clone()));
            }
            meshes.push(builder.build().map_err(error(format!("{name}'s mesh")))?);
        }

        let mut tasks = JoinSet::new();
        let analytics = Analytics::default();
        let mut listeners = listeners.into_iter();
        let mut meshes_iter = meshes.iter();
        let mut next = || {
            (
                listeners.next().expect("a listener per workload"),
                meshes_iter.next().expect("a mesh per workload"),
            )
        };

        let (listener, mesh) = next();
        let ingress = Ingress::new(client(mesh, "productpage")?, client(mesh, "analytics")?);
        serve(&mut tasks, mesh, "ingress", listener, move |request| {
            ingress.clone().handle(request)
        });

        let (listener, mesh) = next();
        let page = ProductPage::new(client(mesh, "details")?, client(mesh, "reviews")?);
        serve(&mut tasks, mesh, "productpage", listener, move |request| {
            page.clone().handle(request)
        });

        let (listener, mesh) = next();
        serve(&mut tasks, mesh, "details", listener, details::handle);

        for version in Version::ALL {
            let (listener, mesh) = next();
            let ratings = match version {
                Version::V1 => None,
                Version::V2 | Version::V3 => Some(
                    meshlib_grpc::channel(mesh, "ratings")
                        .map_err(error("reviews' channel to ratings"))?,
                ),
            };
            let reviews = Reviews::new(version, ratings);
            serve(&mut tasks, mesh, "reviews", listener, move |request| {
                reviews.clone().handle(request)
            });
        }

        let (listener, mesh) = next();
        let events = KafkaCluster::connect(mesh, "events")
            .await
            .map_err(error("ratings' Kafka cluster"))?;
        let producer = events.producer().map_err(error("ratings' producer"))?;
        let server =
            meshlib_grpc::server(mesh, "ratings").add_service(RatingsServer::new(producer));
        let brokers = kafka.clone();
        tasks.spawn(async move {
            let _brokers = brokers;
            if let Err(error) = server.serve(listener).await {
                tracing::error!(%error, "ratings stopped serving");
            }
        });

        let (listener, mesh) = next();
        let events = KafkaCluster::connect(mesh, "events")
            .await
            .map_err(error("analytics' Kafka cluster"))?;
        let consumer = events
            .consumer(&[ratings::TOPIC])
            .map_err(error("analytics' consumer"))?;
        let counter = analytics.clone();
        let brokers = kafka.clone();
        tasks.spawn(async move {
            let _brokers = brokers;
            // The work happens in the future, which runs under the record's `process` span.
            let handler = |record: Record| {
                let counter = counter.clone();
                async move { counter.record(&record) }
            };
            if let Err(error) = consumer.run(handler).await {
                tracing::error!(%error, "analytics stopped consuming");
            }
        });
        let handler = analytics.clone();
        serve(&mut tasks, mesh, "analytics", listener, move |request| {
            handler.clone().handle(request)
        });

        let mut workloads = Vec::new();
        for (i, ((name, _), mesh)) in WORKLOADS.iter().zip(meshes).enumerate() {
            let admin_port = port(options.base_port, usize::from(ADMIN_PORT_OFFSET) + i)?;
            let admin = mesh
                .admin(SocketAddr::from((Ipv4Addr::LOCALHOST, admin_port)))
                .await
                .map_err(error(format!(
                    "{name}'s admin endpoint on port {admin_port}"
                )))?;
            workloads.push(Workload {
                name,
                addr: addrs[i],
                mesh,
                admin,
            });
        }

        let admins: String = workloads
            .iter()
            .map(|workload| format!("{} {}\n", workload.name, workload.admin_addr()))
            .collect();
        let admins_file = options.state_dir.join(ADMINS_FILE);
        std::fs::write(&admins_file, admins)
            .map_err(error(format!("cannot write {}", admins_file.display())))?;

        Ok(Self {
            workloads,
            analytics,
            mesh_file,
            certs_dir,
            kafka,
            tasks,
        })
    }

    /// The workloads, ingress first.
    pub fn workloads(&self) -> &[Workload] {
        &self.workloads
    }

    /// The workload called `name`.
    ///
    /// # Panics
    ///
    /// If there is none: names are fixed (see [`Workload::name`]).
    pub fn workload(&self, name: &str) -> &Workload {
        self.workloads
            .iter()
            .find(|workload| workload.name == name)
            .unwrap_or_else(|| panic!("no workload {name}"))
    }

    /// Where readers come in: the ingress (plaintext HTTP).
    pub fn ingress_addr(&self) -> SocketAddr {
        self.workloads[0].addr
    }

    /// The configuration file every workload follows.
    pub fn mesh_file(&self) -> &Path {
        &self.mesh_file
    }

    /// Where each identity's certificate and key are, with the CA's bundle: `<name>.pem`,
    /// `<name>-key.pem`, `bundle.pem`.
    pub fn certs_dir(&self) -> &Path {
        &self.certs_dir
    }

    /// The Kafka bootstrap brokers, when the cluster is the embedded one.
    pub fn embedded_kafka(&self) -> Option<String> {
        self.kafka
            .as_ref()
            .map(|embedded| embedded.bootstrap.clone())
    }

    /// What analytics has counted.
    pub fn analytics(&self) -> &Analytics {
        &self.analytics
    }

    /// Runs `scenario`'s routes from now on; see [`Bookinfo::switch`].
    pub async fn switch_scenario(&self, scenario: &Scenario) -> Result<(), Error> {
        self.switch(scenario.routes, &scenario.file()).await
    }

    /// Runs `routes` (from `origin`) from now on: writes the configuration file, as
    /// `bookinfo scenario` does, and returns once every workload runs it.
    pub async fn switch(&self, routes: &str, origin: &str) -> Result<(), Error> {
        let contents = scenario::mesh_toml(routes, origin);
        let expected = MeshConfig::from_toml(&contents).map_err(error(origin))?;
        scenario::write(&self.mesh_file, &contents)
            .map_err(error(format!("cannot write {}", self.mesh_file.display())))?;
        let applied = async {
            while !self
                .workloads
                .iter()
                .all(|workload| *workload.mesh.config() == expected)
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(RELOAD_WAIT, applied)
            .await
            .map_err(error(format!("{origin} not applied by every workload")))
    }
}

impl Bookinfo {
    /// Stops every workload and waits until they have: servers, the consumer and the producer
    /// are gone before the embedded Kafka cluster is.
    pub async fn stop(mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }
}

impl Drop for Bookinfo {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

/// The embedded Kafka cluster, on a thread of its own (it is not `Send`) until the last clone
/// is dropped. The tasks of Kafka's clients hold clones, so that the brokers outlive the clients
/// however the application stops: a consumer closing without its brokers waits out its session
/// timeout.
#[derive(Clone, Debug)]
struct EmbeddedBrokers {
    bootstrap: String,
    brokers: Vec<SocketAddr>,
    /// Never sent on: the thread stops when the last sender is dropped.
    _alive: std::sync::mpsc::Sender<()>,
}

impl EmbeddedBrokers {
    /// One broker (replication is not what Bookinfo shows), with the events topic.
    fn start() -> Result<Self, Error> {
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let (alive, stopped) = std::sync::mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("embedded-kafka".to_owned())
            .spawn(move || {
                let started = EmbeddedCluster::new(1).and_then(|cluster| {
                    cluster.create_topic(ratings::TOPIC, 3)?;
                    Ok(cluster)
                });
                match started {
                    Ok(cluster) => {
                        let _ = ready_tx.send(Ok((cluster.bootstrap_servers(), cluster.brokers())));
                        let _ = stopped.recv();
                    }
                    Err(error) => {
                        let _ = ready_tx.send(Err(error));
                    }
                }
            })
            .map_err(error("embedded Kafka cluster"))?;
        let (bootstrap, brokers) = ready
            .recv()
            .map_err(error("embedded Kafka cluster"))?
            .map_err(error("embedded Kafka cluster"))?;
        Ok(Self {
            bootstrap,
            brokers,
            _alive: alive,
        })
    }
}

/// The port `offset` above `base`; 0 (a free port) for a base of 0.
fn port(base: u16, offset: usize) -> Result<u16, Error> {
    if base == 0 {
        return Ok(0);
    }
    u16::try_from(usize::from(base) + offset).map_err(error(format!(
        "base port {base}: port {base} + {offset} is past 65535"
    )))
}

async fn bind(name: &str, port: u16) -> Result<TcpListener, Error> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port))
        .await
        .map_err(error(format!("{name} cannot listen on 127.0.0.1:{port}")))
}

fn client(mesh: &Mesh, service: &str) -> Result<meshlib::HttpClient, Error> {
    mesh.http_client(service)
        .map_err(error(format!("client for {service}")))
}

/// Issues each service account's certificate from a new development CA, writes them into `dir`
/// (for curl), and returns the identities. The certificates also name 127.0.0.1 and localhost,
/// for clients that check the address they dialled, as curl does.
fn issue_identities(dir: &Path) -> Result<BTreeMap<&'static str, Identity>, Error> {
    let ca = DevCa::new(TRUST_DOMAIN).map_err(error("development CA"))?;
    let mut identities = BTreeMap::new();
    for (_, account) in WORKLOADS {
        if identities.contains_key(account) {
            continue;
        }
        let cert = ca
            .request(NAMESPACE, account)
            .ip_san(Ipv4Addr::LOCALHOST.into())
            .dns_san("localhost")
            .issue()
            .map_err(error(format!("{account}'s certificate")))?;
        cert.write_to(dir, account).map_err(error(format!(
            "cannot write {account}'s certificate into {}",
            dir.display()
        )))?;
        let identity = cert
            .identity()
            .map_err(error(format!("{account}'s identity")))?;
        identities.insert(account, identity);
    }
    Ok(identities)
}

/// Serves `handler` as `mesh`'s server `name` on `listener`, in `tasks`.
fn serve<H, F>(
    tasks: &mut JoinSet<()>,
    mesh: &Mesh,
    name: &'static str,
    listener: TcpListener,
    handler: H,
) where
    H: FnMut(Request<Body>) -> F + Clone + Send + 'static,
    F: Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
{
    let server = mesh.server(name);
    tasks.spawn(async move {
        if let Err(error) = server.serve(listener, tower::service_fn(handler)).await {
            tracing::error!(server = name, %error, "stopped serving");
        }
    });
}

/// Switches the Bookinfo running with state in `state_dir` (another process) to `scenario`:
/// writes its configuration file, then asks each workload's admin endpoint (`/config`) until
/// all run the new configuration. Returns how many workloads confirmed.
pub async fn switch_running(state_dir: &Path, scenario: &Scenario) -> Result<usize, Error> {
    let mesh_file = state_dir.join("mesh.toml");
    let admins_file = state_dir.join(ADMINS_FILE);
    let admins = std::fs::read_to_string(&admins_file).map_err(error(format!(
        "no running bookinfo here ({}); start it first, or give its --state-dir",
        admins_file.display()
    )))?;
    let admins: Vec<(&str, &str)> = admins
        .lines()
        .filter_map(|line| line.split_once(' '))
        .collect();
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    // A bookinfo that stopped leaves its files: check that it runs before changing them.
    for (name, addr) in &admins {
        if running_config(&client, addr).await.is_none() {
            return Err(Error {
                context: format!("{name}'s admin endpoint {addr} does not answer"),
                source: "is bookinfo running? Start it first, or give its --state-dir".into(),
            });
        }
    }

    let contents = scenario::mesh_toml(scenario.routes, &scenario.file());
    let expected = MeshConfig::from_toml(&contents).map_err(error(scenario.file()))?;
    let expected = serde_json::to_value(&expected).map_err(error("the configuration as JSON"))?;
    scenario::write(&mesh_file, &contents)
        .map_err(error(format!("cannot write {}", mesh_file.display())))?;

    let mut confirmed = 0;
    for (name, addr) in admins {
        let applied = async {
            while running_config(&client, addr).await.as_ref() != Some(&expected) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(RELOAD_WAIT, applied)
            .await
            .map_err(error(format!(
                "{name} (admin endpoint {addr}) does not run {} after {RELOAD_WAIT:?}; its log \
                 says why",
                scenario.file()
            )))?;
        confirmed += 1;
    }
    Ok(confirmed)
}

/// The configuration the workload with admin endpoint `addr` runs, as JSON.
async fn running_config(
    client: &Client<HttpConnector, Empty<Bytes>>,
    addr: &str,
) -> Option<serde_json::Value> {
    let uri = format!("http://{addr}/config").parse().ok()?;
    let response = client.get(uri).await.ok()?;
    let body = response.into_body().collect().await.ok()?.to_bytes();
    serde_json::from_slice(&body).ok()
}
