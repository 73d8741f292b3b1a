//! A cluster's TLS comes from the mesh identity: `tls = {}` makes librdkafka's `ssl.*` settings
//! point at the `[identity]` files, files given in `tls` win one by one, and files that are not
//! what they should be are configuration errors naming the setting and the file.

use meshlib::identity::DevCa;
use meshlib::{Mesh, MeshConfig};
use meshlib_kafka::{EmbeddedCluster, KafkaCluster};
use meshlib_tests::kafka::CLUSTER;

fn mesh(embedded: &EmbeddedCluster, toml: &str) -> Result<Mesh, meshlib::Error> {
    let config = MeshConfig::from_toml(toml).expect("the configuration parses");
    Mesh::builder(config)
        .resolver(CLUSTER, embedded.resolver())
        .build()
}

fn setting(cluster: &KafkaCluster, key: &str) -> Option<String> {
    cluster.client_config().unwrap().get(key).map(str::to_owned)
}

#[tokio::test]
async fn tls_settings_come_from_the_mesh_identity() {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::new("cluster.local").unwrap();
    let files = ca
        .issue("default", "billing")
        .unwrap()
        .write_to(dir.path(), "billing")
        .unwrap();
    let identity = format!(
        "[identity]\ncert = {:?}\nkey = {:?}\nbundle = {:?}\n",
        files.cert, files.key, files.bundle
    );
    let embedded = EmbeddedCluster::new(1).unwrap();

    let mesh_tls = mesh(
        &embedded,
        &format!("{identity}[kafka.{CLUSTER}]\ntls = {{}}\n"),
    )
    .unwrap();
    let cluster = KafkaCluster::connect(&mesh_tls, CLUSTER).await.unwrap();
    let path = |p: &std::path::Path| Some(p.display().to_string());
    assert_eq!(
        setting(&cluster, "security.protocol").as_deref(),
        Some("ssl")
    );
    assert_eq!(setting(&cluster, "ssl.ca.location"), path(&files.bundle));
    assert_eq!(
        setting(&cluster, "ssl.certificate.location"),
        path(&files.cert)
    );
    assert_eq!(setting(&cluster, "ssl.key.location"), path(&files.key));

    // A broker CA of its own; the client still presents the mesh identity.
    let broker_ca = dir.path().join("broker-ca.pem");
    std::fs::write(
        &broker_ca,
        DevCa::new("brokers.local").unwrap().bundle_pem(),
    )
    .unwrap();
    let own_ca = format!("{identity}[kafka.{CLUSTER}]\ntls = {{ ca = {broker_ca:?} }}\n");
    let cluster = KafkaCluster::connect(&mesh(&embedded, &own_ca).unwrap(), CLUSTER)
        .await
        .unwrap();
    assert_eq!(setting(&cluster, "ssl.ca.location"), path(&broker_ca));
    assert_eq!(
        setting(&cluster, "ssl.certificate.location"),
        path(&files.cert)
    );

    // No TLS asked for: plaintext, identity or not.
    let plain = format!("{identity}[kafka.{CLUSTER}]\n");
    let cluster = KafkaCluster::connect(&mesh(&embedded, &plain).unwrap(), CLUSTER)
        .await
        .unwrap();
    assert_eq!(setting(&cluster, "security.protocol"), None);
    assert_eq!(setting(&cluster, "ssl.certificate.location"), None);
}

#[tokio::test]
async fn bad_tls_files_and_a_missing_identity_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let embedded = EmbeddedCluster::new(1).unwrap();

    // Without an identity, `tls = {}` has no CA to verify the brokers with.
    let error = mesh(&embedded, &format!("[kafka.{CLUSTER}]\ntls = {{}}\n")).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("kafka.events.tls.ca: is missing, and the mesh has no [identity]"),
        "{error}"
    );

    // A private key where the CA belongs.
    let workload = DevCa::new("cluster.local")
        .unwrap()
        .issue("default", "billing")
        .unwrap();
    let key = dir.path().join("billing-key.pem");
    std::fs::write(&key, workload.key_pem()).unwrap();
    let mesh_bad = mesh(
        &embedded,
        &format!("[kafka.{CLUSTER}]\ntls = {{ ca = {key:?} }}\n"),
    )
    .unwrap();
    let error = KafkaCluster::connect(&mesh_bad, CLUSTER).await.unwrap_err();
    assert!(error.is_config(), "{error}");
    assert_eq!(
        error.to_string(),
        format!(
            "kafka.events.tls.ca: {} holds PEM blocks of PRIVATE KEY, where a PEM CERTIFICATE \
             was expected",
            key.display()
        )
    );

    // A file that is not there.
    let missing = dir.path().join("nope.pem");
    let mesh_missing = mesh(
        &embedded,
        &format!("[kafka.{CLUSTER}]\ntls = {{ ca = {missing:?} }}\n"),
    )
    .unwrap();
    let error = KafkaCluster::connect(&mesh_missing, CLUSTER)
        .await
        .unwrap_err();
    assert!(
        error.to_string().starts_with(&format!(
            "kafka.events.tls.ca: cannot read {}",
            missing.display()
        )),
        "{error}"
    );
}
