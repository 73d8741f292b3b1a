//! TLS to the brokers: librdkafka's `ssl.*` settings from the mesh's certificate files.
//!
//! One function on purpose. Today the files come from `[kafka.<name>].tls`; when the mesh has an
//! identity of its own (the security work: a SPIFFE certificate, its key and the trust bundle),
//! [`tls_settings`] is the one place to point at it, so that Kafka and HTTP present the same
//! identity and trust the same roots.

use meshlib::config::KafkaTlsConfig;

/// The librdkafka settings for `tls`: TLS with the brokers' certificates verified against the CA,
/// host names included, and a client certificate for mutual TLS when one is given.
pub fn tls_settings(tls: &KafkaTlsConfig) -> Vec<(&'static str, String)> {
    let mut settings = vec![
        ("security.protocol", "ssl".to_owned()),
        ("ssl.ca.location", tls.ca.display().to_string()),
        // librdkafka's default since 2.0, set anyway so an older library cannot downgrade it.
        ("ssl.endpoint.identification.algorithm", "https".to_owned()),
    ];
    if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
        settings.push(("ssl.certificate.location", cert.display().to_string()));
        settings.push(("ssl.key.location", key.display().to_string()));
    }
    settings
}
