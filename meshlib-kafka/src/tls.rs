//! TLS to the brokers: librdkafka's `ssl.*` settings from the mesh identity's certificate files.
//!
//! A cluster's `tls` names the files it wants; each one it leaves out comes from the mesh's
//! identity (`[identity]`, or an identity read from files and given in code): the trust bundle as
//! the brokers' CA, the certificate and key as the client's. So `tls = {}` makes Kafka present the
//! very certificate the HTTP stacks present and trust the same roots, and a rotation written to
//! those files reaches Kafka clients made after it (librdkafka reads the files when a client is
//! made, and keeps them for that client's life).
//!
//! The files are read once when the cluster connects, so that a missing file, a file that is not
//! PEM, or a key where a certificate belongs is a configuration error naming the setting and the
//! path, rather than an OpenSSL error from the first producer.

use std::path::{Path, PathBuf};

use meshlib::config::{IdentityConfig, KafkaTlsConfig};

use crate::Error;

/// The librdkafka settings for `tls`'s own files: TLS with the brokers' certificates verified
/// against `ca` (host names included), and a client certificate for mutual TLS when one is given.
///
/// Files `tls` leaves out are left out here too (librdkafka then uses the system's CAs and
/// presents no certificate); [`KafkaCluster`](crate::KafkaCluster) fills them in from the mesh
/// identity.
pub fn tls_settings(tls: &KafkaTlsConfig) -> Vec<(&'static str, String)> {
    let client = tls.cert.as_deref().zip(tls.key.as_deref());
    librdkafka_settings(tls.ca.as_deref(), client)
}

/// The settings for `tls` with what it leaves out taken from `identity`, after checking that
/// each file is there and holds what it should.
pub(crate) fn settings(
    cluster: &str,
    tls: &KafkaTlsConfig,
    identity: Option<&IdentityConfig>,
) -> Result<Vec<(&'static str, String)>, Error> {
    let file = |key: &str, own: &Option<PathBuf>, from_identity: Option<&PathBuf>| match (
        own,
        from_identity,
    ) {
        (Some(path), _) => Some(Source {
            key: format!("kafka.{cluster}.tls.{key}"),
            path: path.clone(),
        }),
        (None, Some(path)) => Some(Source {
            key: format!("kafka.{cluster}.tls.{key} (from the mesh identity)"),
            path: path.clone(),
        }),
        (None, None) => None,
    };
    let ca = file("ca", &tls.ca, identity.map(|i| &i.bundle)).ok_or_else(|| {
        Error::config(
            format_args!("kafka.{cluster}.tls.ca"),
            "is missing, and the mesh has no identity read from files whose trust bundle would \
             stand in: give the CA that signed the brokers' certificates",
        )
    })?;
    // A certificate and key go together: both from `tls`, or both from the identity.
    let client = match (&tls.cert, &tls.key) {
        (Some(_), Some(_)) => Some((file("cert", &tls.cert, None), file("key", &tls.key, None))),
        _ => identity.map(|i| {
            (
                file("cert", &None, Some(&i.cert)),
                file("key", &None, Some(&i.key)),
            )
        }),
    };
    ca.check(&["CERTIFICATE"])?;
    let client = match client {
        Some((Some(cert), Some(key))) => {
            cert.check(&["CERTIFICATE"])?;
            key.check(&["PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY"])?;
            Some((cert.path, key.path))
        }
        _ => None,
    };
    Ok(librdkafka_settings(
        Some(&ca.path),
        client.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
    ))
}

fn librdkafka_settings(
    ca: Option<&Path>,
    client: Option<(&Path, &Path)>,
) -> Vec<(&'static str, String)> {
    let mut settings = vec![
        ("security.protocol", "ssl".to_owned()),
        // librdkafka's default since 2.0, set anyway so an older library cannot downgrade it.
        ("ssl.endpoint.identification.algorithm", "https".to_owned()),
    ];
    if let Some(ca) = ca {
        settings.push(("ssl.ca.location", ca.display().to_string()));
    }
    if let Some((cert, key)) = client {
        settings.push(("ssl.certificate.location", cert.display().to_string()));
        settings.push(("ssl.key.location", key.display().to_string()));
    }
    settings
}

/// One file a setting names, and the setting's name for errors.
struct Source {
    key: String,
    path: PathBuf,
}

impl Source {
    /// Checks that the file is there and holds at least one PEM block with one of `labels`; an
    /// encrypted key is refused, as the mesh has no passphrase to give librdkafka.
    fn check(&self, labels: &[&str]) -> Result<(), Error> {
        let path = self.path.display();
        let text = std::fs::read(&self.path).map_err(|error| {
            Error::config(&self.key, format_args!("cannot read {path}: {error}"))
        })?;
        let text = String::from_utf8_lossy(&text);
        let found: Vec<&str> = text
            .lines()
            .filter_map(|line| line.trim().strip_prefix("-----BEGIN "))
            .filter_map(|rest| rest.strip_suffix("-----"))
            .collect();
        if found.contains(&"ENCRYPTED PRIVATE KEY") {
            return Err(Error::config(
                &self.key,
                format_args!("{path} holds an encrypted private key; give it unencrypted"),
            ));
        }
        if found.iter().any(|label| labels.contains(label)) {
            return Ok(());
        }
        let holds = if found.is_empty() {
            "no PEM block".to_owned()
        } else {
            format!("PEM blocks of {}", found.join(", "))
        };
        Err(Error::config(
            &self.key,
            format_args!(
                "{path} holds {holds}, where a PEM {} was expected",
                labels.join(" or ")
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n";

    /// A directory with the mesh identity's three files and a broker CA of another name.
    struct Files {
        dir: PathBuf,
    }

    impl Files {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir()
                .join(format!("meshlib-kafka-tls-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            for (file, text) in [
                ("id.pem", CERT),
                ("id.key", KEY),
                ("bundle.pem", CERT),
                ("broker-ca.pem", CERT),
                ("own.pem", CERT),
                ("own.key", KEY),
            ] {
                std::fs::write(dir.join(file), text).unwrap();
            }
            Self { dir }
        }

        fn path(&self, file: &str) -> PathBuf {
            self.dir.join(file)
        }

        fn identity(&self) -> IdentityConfig {
            IdentityConfig::new(
                self.path("id.pem"),
                self.path("id.key"),
                self.path("bundle.pem"),
            )
        }
    }

    impl Drop for Files {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn as_map(settings: Vec<(&'static str, String)>) -> BTreeMap<&'static str, String> {
        settings.into_iter().collect()
    }

    fn tls(ca: Option<PathBuf>, client: Option<(PathBuf, PathBuf)>) -> KafkaTlsConfig {
        let mut tls = KafkaTlsConfig::from_identity();
        tls.ca = ca;
        if let Some((cert, key)) = client {
            tls = tls.with_client_cert(cert, key);
        }
        tls
    }

    #[test]
    fn an_empty_tls_table_is_the_mesh_identity() {
        let files = Files::new("identity");
        let got = as_map(settings("events", &tls(None, None), Some(&files.identity())).unwrap());
        let expect = |key: &str, file: &str| {
            assert_eq!(got[key], files.path(file).display().to_string(), "{key}");
        };
        assert_eq!(got["security.protocol"], "ssl");
        assert_eq!(got["ssl.endpoint.identification.algorithm"], "https");
        expect("ssl.ca.location", "bundle.pem");
        expect("ssl.certificate.location", "id.pem");
        expect("ssl.key.location", "id.key");
        assert_eq!(got.len(), 5);
    }

    #[test]
    fn files_given_win_over_the_identity_one_by_one() {
        let files = Files::new("own");
        let identity = files.identity();
        let ca_only = tls(Some(files.path("broker-ca.pem")), None);
        let got = as_map(settings("events", &ca_only, Some(&identity)).unwrap());
        assert_eq!(
            got["ssl.ca.location"],
            files.path("broker-ca.pem").display().to_string()
        );
        assert_eq!(
            got["ssl.certificate.location"],
            files.path("id.pem").display().to_string()
        );

        let own_client = tls(None, Some((files.path("own.pem"), files.path("own.key"))));
        let got = as_map(settings("events", &own_client, Some(&identity)).unwrap());
        assert_eq!(
            got["ssl.ca.location"],
            files.path("bundle.pem").display().to_string()
        );
        assert_eq!(
            got["ssl.certificate.location"],
            files.path("own.pem").display().to_string()
        );
        assert_eq!(
            got["ssl.key.location"],
            files.path("own.key").display().to_string()
        );
    }

    #[test]
    fn without_an_identity_only_the_files_given_are_used() {
        let files = Files::new("no-identity");
        let got = as_map(
            settings(
                "events",
                &tls(Some(files.path("broker-ca.pem")), None),
                None,
            )
            .unwrap(),
        );
        assert_eq!(
            got["ssl.ca.location"],
            files.path("broker-ca.pem").display().to_string()
        );
        assert!(!got.contains_key("ssl.certificate.location"));

        let error = settings("events", &tls(None, None), None).unwrap_err();
        assert!(error.is_config());
        assert!(
            error
                .to_string()
                .starts_with("kafka.events.tls.ca: is missing"),
            "{error}"
        );
    }

    #[test]
    fn bad_files_are_config_errors_naming_the_setting_and_the_file() {
        let files = Files::new("bad");
        let identity = files.identity();
        let missing = files.path("nope.pem");
        let error =
            settings("events", &tls(Some(missing.clone()), None), Some(&identity)).unwrap_err();
        assert!(error.is_config());
        let message = error.to_string();
        assert!(
            message.starts_with("kafka.events.tls.ca: cannot read "),
            "{message}"
        );
        assert!(
            message.contains(&missing.display().to_string()),
            "{message}"
        );

        // A key where the certificate belongs, in the identity's files.
        std::fs::write(files.path("id.pem"), KEY).unwrap();
        let error = settings("events", &tls(None, None), Some(&identity)).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "kafka.events.tls.cert (from the mesh identity): {} holds PEM blocks of PRIVATE \
                 KEY, where a PEM CERTIFICATE was expected",
                files.path("id.pem").display()
            )
        );

        std::fs::write(files.path("id.pem"), CERT).unwrap();
        std::fs::write(files.path("id.key"), "not pem at all").unwrap();
        let error = settings("events", &tls(None, None), Some(&identity)).unwrap_err();
        assert!(error.to_string().contains("holds no PEM block"), "{error}");

        std::fs::write(
            files.path("id.key"),
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIE\n-----END ENCRYPTED PRIVATE KEY-----\n",
        )
        .unwrap();
        let error = settings("events", &tls(None, None), Some(&identity)).unwrap_err();
        assert!(
            error.to_string().contains("encrypted private key"),
            "{error}"
        );
    }

    #[test]
    fn tls_settings_maps_only_the_files_given() {
        let got = as_map(tls_settings(&tls(
            Some("/etc/ca.pem".into()),
            Some(("/etc/c.pem".into(), "/etc/c.key".into())),
        )));
        assert_eq!(got["ssl.ca.location"], "/etc/ca.pem");
        assert_eq!(got["ssl.certificate.location"], "/etc/c.pem");
        assert_eq!(got["ssl.key.location"], "/etc/c.key");
        assert!(
            !as_map(tls_settings(&KafkaTlsConfig::from_identity())).contains_key("ssl.ca.location")
        );
    }
}
