//! Mutual TLS to a real Kafka-compatible broker, with the mesh identity: the mock cluster has no
//! TLS listener, so this suite runs `tansu` (crates.io, a Kafka-compatible broker in Rust) and
//! has a meshlib producer and consumer, whose `ssl.*` settings come from the mesh's `[identity]`
//! (`tls = {}`), write and read a record through TLS, its `traceparent` header included. Clients
//! without the mesh identity, or with a certificate from another CA, are refused at the
//! handshake, and both meshlib's client errors and the send's own error say so.
//!
//! The TLS listener is `stunnel` in front of tansu, not tansu itself: tansu 0.6.0 (the latest
//! release when this was written) builds no TLS listener. Its `broker` command refuses `--cert`
//! together with `--key` (clap puts both in one exclusive group), and its accept loop never hands
//! connections to the TLS acceptor it builds. So tansu serves plaintext on one loopback port and
//! advertises the other, where stunnel terminates TLS with the broker's certificate from the
//! development CA and requires a client certificate that chains to the same CA: every connection
//! librdkafka makes, the bootstrap one and those to the advertised broker, goes through TLS.
//!
//! Opt-in, as tansu is a long build: `.ci/tansu` installs tansu and stunnel and runs this suite
//! (`cargo test -p meshlib-tests --test kafka_tls -- --ignored`). The broker is `tansu` on the
//! `PATH`, or the binary `TANSU` names; the terminator is `stunnel`, or the binary `STUNNEL`
//! names.

use std::fs::File;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use meshlib::config::IdentityConfig;
use meshlib::identity::DevCa;
use meshlib::{Mesh, MeshConfig};
use meshlib_kafka::{KafkaCluster, Record};
use meshlib_tests::kafka;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::process::{Child, Command};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "opt-in: needs tansu (cargo install tansu --locked --features dynostore) and \
            stunnel; run .ci/tansu"]
async fn records_round_trip_over_mutual_tls_with_the_mesh_identity() {
    client_reports();
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::new("cluster.local").unwrap();
    let broker = Broker::start(dir.path(), &ca).await;
    let client = ca
        .issue("default", "billing")
        .unwrap()
        .write_to(dir.path(), "billing")
        .unwrap();
    kafka_over_tls(broker.addr, &client.bundle, Some(&client))
        .await
        .unwrap_or_else(|error| panic!("{}", broker.refused(&error)));

    let toml = format!(
        "[identity]\ncert = {:?}\nkey = {:?}\nbundle = {:?}\n\n\
         [kafka.{cluster}]\n\
         discovery = {{ kind = \"static\", endpoints = [\"{addr}\"] }}\n\
         tls = {{}}\n\
         consumer.session_timeout = \"6s\"\n",
        client.cert,
        client.key,
        client.bundle,
        cluster = kafka::CLUSTER,
        addr = broker.addr,
    );
    let mesh = Mesh::new(MeshConfig::from_toml(&toml).unwrap()).unwrap();
    let events = KafkaCluster::connect(&mesh, kafka::CLUSTER).await.unwrap();
    let settings = events.client_config().unwrap();
    assert_eq!(settings.get("security.protocol"), Some("ssl"));
    assert_eq!(
        settings.get("ssl.certificate.location"),
        Some(client.cert.display().to_string().as_str())
    );
    create_topic(&events, "orders").await;

    let producer = events.producer().unwrap();
    let delivery = tokio::time::timeout(
        Duration::from_secs(20),
        producer.send(Record::new("orders", r#"{"id":7}"#).key("k7")),
    )
    .await
    .expect("the record is acknowledged over TLS within 20 s")
    .expect("delivered");
    assert_eq!(delivery.topic, "orders");

    let (seen, stop) = kafka::collect(&events, &["orders"]);
    seen.wait_for(Duration::from_secs(20), |records| !records.is_empty())
        .await;
    stop.stop().await;
    let record = &seen.records()[0];
    assert_eq!(record.key_str(), Some("k7"));
    assert_eq!(&record.value()[..], br#"{"id":7}"#);
    let traceparent = std::str::from_utf8(record.header_value("traceparent").unwrap()).unwrap();
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(
        (parts.len(), parts[0], parts[1].len(), parts[2].len()),
        (4, "00", 32, 16),
        "{traceparent}"
    );
    // Every client connection went through the terminator, with the mesh identity accepted.
    let log = broker.log();
    assert!(log.contains("Certificate accepted at depth=0"), "{log}");
    assert!(!log.contains("certificate verify failed"), "{log}");
    assert!(!log.contains("did not return a certificate"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "opt-in: needs tansu (cargo install tansu --locked --features dynostore) and \
            stunnel; run .ci/tansu"]
async fn clients_without_the_mesh_identity_are_refused_at_the_handshake() {
    client_reports();
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::new("cluster.local").unwrap();
    let broker = Broker::start(dir.path(), &ca).await;
    let bundle = dir.path().join("bundle.pem");
    std::fs::write(&bundle, ca.bundle_pem()).unwrap();
    // Another development CA for the same trust domain, issuing the same SPIFFE ID: an unknown
    // issuer to the broker.
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let foreign = DevCa::new("cluster.local")
        .unwrap()
        .issue("default", "billing")
        .unwrap()
        .write_to(&elsewhere, "billing")
        .unwrap();

    // Both clients trust the broker; the broker trusts neither of them.
    let error = kafka_over_tls(broker.addr, &bundle, None)
        .await
        .expect_err("a client without a certificate is refused");
    assert_eq!(
        alert(&error),
        Some(rustls::AlertDescription::CertificateRequired)
    );
    broker
        .wait_for_log("peer did not return a certificate")
        .await;
    let error = kafka_over_tls(broker.addr, &bundle, Some(&foreign))
        .await
        .expect_err("a certificate from another CA is refused");
    assert_eq!(alert(&error), Some(rustls::AlertDescription::UnknownCA));
    broker.wait_for_log("certificate verify failed").await;

    // The same two clients made by meshlib: TLS to the brokers (`tls`, with their CA), and no
    // identity, or an identity from another CA. librdkafka does not even present a certificate
    // whose issuer is not among the CAs the broker names in its handshake, so both are refused
    // for want of one, and meshlib's client errors carry the broker's TLS alert.
    for (cluster, identity, reports) in [
        ("anonymous", String::new(), &["certificate required"][..]),
        (
            "foreign",
            format!(
                "[identity]\ncert = {:?}\nkey = {:?}\nbundle = {:?}\n\n",
                foreign.cert, foreign.key, foreign.bundle
            ),
            &[
                "No matching issuer found in server trusted certificate authorities",
                "certificate required",
            ][..],
        ),
    ] {
        let toml = format!(
            "{identity}[kafka.{cluster}]\n\
             discovery = {{ kind = \"static\", endpoints = [\"{addr}\"] }}\n\
             tls = {{ ca = {bundle:?} }}\n\
             producer.delivery_timeout = \"3s\"\n",
            addr = broker.addr,
        );
        let mesh = Mesh::new(MeshConfig::from_toml(&toml).unwrap()).unwrap();
        let events = KafkaCluster::connect(&mesh, cluster).await.unwrap();
        let producer = events.producer().unwrap();
        let sent = tokio::time::timeout(
            Duration::from_secs(20),
            producer.send(Record::new("orders", r#"{"id":7}"#)),
        )
        .await
        .expect("the send ends within 20 s");
        // librdkafka retries a refused connection until the delivery timeout; the send's error
        // is that timeout, with the cluster's last error naming the broker's TLS alert.
        let error = sent.expect_err("nothing is delivered without the broker's trust");
        println!("{cluster}: {error}");
        assert_eq!(
            error.kafka_code(),
            Some(RDKafkaErrorCode::MessageTimedOut),
            "{error}"
        );
        assert!(error.is_retriable(), "{error}");
        let text = error.to_string();
        // Three attempts, the default; the broker's alert came on the first read after the
        // client's side of the TLS 1.3 handshake.
        assert!(
            text.starts_with("orders: not delivered within 3s, in each of 3 attempts: "),
            "{text}"
        );
        assert!(text.contains("; the cluster's last error ("), "{text}");
        assert!(text.contains("tlsv13 alert certificate required"), "{text}");
        assert!(error.cluster_error().is_some(), "{error:?}");
        for text in reports {
            client_reports().wait_for(cluster, text).await;
        }
    }
}

/// The broker: tansu, plaintext on a loopback port, behind stunnel, TLS on `addr`, which is
/// what tansu advertises. Both are killed when this is dropped.
struct Broker {
    addr: SocketAddr,
    stunnel_log: PathBuf,
    _tansu: Child,
    _stunnel: Child,
}

impl Broker {
    /// Starts tansu and stunnel, with a broker certificate (for 127.0.0.1) from `ca`, and waits
    /// until both accept connections.
    async fn start(dir: &Path, ca: &DevCa) -> Self {
        let tls = free_port();
        let plain = free_port();
        let advertised = format!("tcp://{tls}");
        let mut tansu = Command::new(program("TANSU", "tansu"));
        tansu
            .args(["broker", "--storage-engine", "memory://tansu/"])
            .arg("--listener-url")
            .arg(format!("tcp://{plain}"))
            .args(["--advertised-listener-url", &advertised]);
        let tansu = spawn(tansu, plain, &dir.join("tansu.log")).await;

        let cert = ca
            .request("kafka", "broker")
            .ip_san(Ipv4Addr::LOCALHOST.into())
            .issue()
            .unwrap();
        let files = dir.join("broker");
        std::fs::create_dir(&files).unwrap();
        let cert = cert.write_to(&files, "broker").unwrap();
        // stunnel warns about a key others can read.
        std::fs::set_permissions(&cert.key, std::fs::Permissions::from_mode(0o600)).unwrap();
        // `verifyChain` and `requireCert`: a client certificate is required and must chain to
        // the CA (stunnel's `verify = 2`). TLS 1.2 at least, as meshlib's own listeners.
        let config = format!(
            "foreground = yes\npid =\ndebug = notice\n\n\
             [kafka]\naccept = {tls}\nconnect = {plain}\n\
             cert = {}\nkey = {}\nCAfile = {}\n\
             verifyChain = yes\nrequireCert = yes\nsslVersionMin = TLSv1.2\n",
            cert.cert.display(),
            cert.key.display(),
            cert.bundle.display(),
        );
        let path = dir.join("stunnel.conf");
        std::fs::write(&path, config).unwrap();
        let mut stunnel = Command::new(program("STUNNEL", "stunnel"));
        stunnel.arg(&path);
        let stunnel_log = dir.join("stunnel.log");
        let stunnel = spawn(stunnel, tls, &stunnel_log).await;
        Self {
            addr: tls,
            stunnel_log,
            _tansu: tansu,
            _stunnel: stunnel,
        }
    }

    /// What stunnel logged so far: one line per connection accepted, and each refused handshake
    /// with OpenSSL's reason.
    fn log(&self) -> String {
        std::fs::read_to_string(&self.stunnel_log).unwrap_or_default()
    }

    /// Waits (up to 10 s) until stunnel logs `text`.
    async fn wait_for_log(&self, text: &str) {
        let found = tokio::time::timeout(Duration::from_secs(10), async {
            while !self.log().contains(text) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        assert!(found.is_ok(), "stunnel logged no {text:?}: {}", self.log());
    }

    /// `error` with what stunnel said about the connection, for a failed check.
    fn refused(&self, error: &std::io::Error) -> String {
        format!(
            "Kafka over TLS to {} failed: {error}\n{}",
            self.addr,
            self.log()
        )
    }
}

fn program(variable: &str, default: &str) -> std::ffi::OsString {
    std::env::var_os(variable).unwrap_or_else(|| default.into())
}

fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    listener.local_addr().unwrap()
}

/// Spawns `command` with its output in `log`, killed on drop, and waits (up to 20 s) until it
/// accepts connections on `addr`; one that exits first fails the test with what it printed.
async fn spawn(mut command: Command, addr: SocketAddr, log: &Path) -> Child {
    let out = File::create(log).unwrap();
    let name = command.as_std().get_program().to_owned();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|error| panic!("cannot start {name:?} (run .ci/tansu): {error}"));
    let ready = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Err(status);
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{name:?} listens on {addr} within 20 s"));
    if let Err(status) = ready {
        let output = std::fs::read_to_string(log).unwrap_or_default();
        panic!("{name:?} exited ({status}) before listening on {addr}: {output}");
    }
    child
}

/// One Kafka request over TLS, checked against `bundle`, presenting `identity`'s certificate
/// when given: ApiVersions v0, whose answer must carry the request's correlation id.
///
/// The broker refuses a client certificate after the client's side of a TLS 1.3 handshake is
/// done, so a refusal shows on the first read, as the alert the broker sent; the request proves
/// that a handshake that succeeds reaches the broker behind it.
async fn kafka_over_tls(
    addr: SocketAddr,
    bundle: &Path,
    identity: Option<&IdentityConfig>,
) -> std::io::Result<()> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(bundle).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        Some(identity) => {
            let chain = CertificateDer::pem_file_iter(&identity.cert)
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_file(&identity.key).unwrap();
            config.with_client_auth_cert(chain, key).unwrap()
        }
        None => config.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let name = ServerName::IpAddress(addr.ip().into());
        let mut tls = connector.connect(name, tcp).await?;
        // Size, then ApiVersions (key 18) v0, correlation id 7, no client id.
        let mut request = 10_i32.to_be_bytes().to_vec();
        request.extend_from_slice(&[0, 18, 0, 0, 0, 0, 0, 7, 0xff, 0xff]);
        tls.write_all(&request).await?;
        let size = tls.read_i32().await?;
        let correlation = tls.read_i32().await?;
        if size < 4 || correlation != 7 {
            return Err(std::io::Error::new(
                ErrorKind::InvalidData,
                format!("ApiVersions answered with size {size}, correlation id {correlation}"),
            ));
        }
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                ErrorKind::TimedOut,
                "no answer to ApiVersions within 10 s",
            ))
        })
}

/// The TLS alert the broker sent, when that is what ended the exchange.
fn alert(error: &std::io::Error) -> Option<rustls::AlertDescription> {
    match error.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::AlertReceived(alert) => Some(*alert),
        _ => None,
    }
}

/// Creates `topic` through the cluster's own (TLS) client settings.
async fn create_topic(cluster: &KafkaCluster, topic: &str) {
    let admin: AdminClient<DefaultClientContext> =
        cluster.client_config().unwrap().create().unwrap();
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("tansu answers CreateTopics over TLS");
    for result in results {
        result.unwrap_or_else(|(topic, code)| panic!("creating {topic}: {code}"));
    }
}

/// What meshlib reports about its Kafka clients (its `kafka client error` events and
/// librdkafka's logs, each with the cluster's name), collected from every test of this suite;
/// also logs to the test's output when `RUST_LOG` asks for it.
fn client_reports() -> &'static ClientReports {
    static REPORTS: OnceLock<ClientReports> = OnceLock::new();
    REPORTS.get_or_init(|| {
        let reports = ClientReports::default();
        tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .with_test_writer()
                    .with_filter(EnvFilter::from_default_env()),
            )
            .with(reports.clone())
            .init();
        reports
    })
}

/// Reports as `cluster: message error reason` lines.
#[derive(Clone, Default)]
struct ClientReports {
    lines: Arc<Mutex<Vec<String>>>,
}

impl ClientReports {
    /// Waits (up to 10 s) for a report about `cluster` that mentions `text`.
    async fn wait_for(&self, cluster: &str, text: &str) {
        let prefix = format!("{cluster}: ");
        let found = || {
            let lines = self.lines.lock().unwrap();
            lines
                .iter()
                .any(|line| line.starts_with(&prefix) && line.contains(text))
        };
        let waited = tokio::time::timeout(Duration::from_secs(10), async {
            while !found() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        if waited.is_err() {
            let lines = self.lines.lock().unwrap();
            panic!("meshlib reported nothing about {cluster} mentioning {text:?}: {lines:#?}");
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for ClientReports {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        if fields.message == "kafka client error" || fields.message.starts_with("librdkafka: ") {
            let line = format!(
                "{}: {} {} {}",
                fields.cluster, fields.message, fields.error, fields.reason
            );
            self.lines.lock().unwrap().push(line);
        }
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    cluster: String,
    error: String,
    reason: String,
}

impl tracing::field::Visit for Fields {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.record_debug(field, &format_args!("{value}"));
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let slot = match field.name() {
            "message" => &mut self.message,
            "cluster" => &mut self.cluster,
            "error" => &mut self.error,
            "reason" => &mut self.reason,
            _ => return,
        };
        *slot = format!("{value:?}");
    }
}
