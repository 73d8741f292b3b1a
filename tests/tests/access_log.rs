//! With `access_log` on, each request gives one JSON line on each side, through
//! tracing-subscriber's JSON formatter: who, what, how it ended, how long, and the ids that tie
//! the lines to each other and to the trace; over mTLS, the server's line names the caller's
//! SPIFFE ID.

use std::convert::Infallible;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use meshlib::Body;
use meshlib::telemetry::access_log_layer_with_writer;
use meshlib_tests::mtls::{Pki, spiffe_id};
use meshlib_tests::telemetry::{serve, traced_mesh};
use opentelemetry_sdk::trace::InMemorySpanExporter;
use serde_json::Value;
use tower_service::Service as _;
use tracing_subscriber::layer::SubscriberExt as _;

/// Lines written by the layer, shared with the test.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl Write for Lines {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// One thread: the subscriber is the test thread's default, and every task of this runtime (the
// server's too) runs on it.
#[tokio::test(flavor = "current_thread")]
async fn one_json_line_per_request_on_each_side() {
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber =
        tracing_subscriber::registry().with(access_log_layer_with_writer(move || writer.clone()));
    let _default = tracing::subscriber::set_default(subscriber);

    let exporter = InMemorySpanExporter::default();
    let config = "[telemetry]\naccess_log = true\n";
    let server_mesh = traced_mesh(config, &exporter, "inventory");
    let (addr, _server) = serve(&server_mesh, "inventory", |_: Request<Body>| async {
        Ok::<_, Infallible>(
            Response::builder()
                .status(StatusCode::CREATED)
                .body(Body::empty())
                .unwrap(),
        )
    })
    .await;
    let client_mesh = traced_mesh(
        &format!(
            "{config}[services.inventory]\ndiscovery = {{ kind = \"static\", endpoints = [\"{addr}\"] }}\n"
        ),
        &exporter,
        "shop",
    );
    let mut client = client_mesh.http_client("inventory").unwrap();
    let response = tokio::time::timeout(
        Duration::from_secs(5),
        client.call(
            Request::put("/items/42")
                .header("x-request-id", "order-7-line-3")
                .body(Body::from("{}"))
                .unwrap(),
        ),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);

    let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
    let entries: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("JSON: {line}")))
        .collect();
    assert_eq!(entries.len(), 2, "{text}");
    let side = |direction: &str| {
        entries
            .iter()
            .find(|entry| entry["direction"] == direction)
            .unwrap_or_else(|| panic!("an {direction} line: {text}"))
    };
    let outbound = side("outbound");
    let inbound = side("inbound");

    for entry in [outbound, inbound] {
        assert_eq!(entry["target"], "meshlib::access");
        assert_eq!(entry["service"], "inventory");
        assert_eq!(entry["method"], "PUT");
        assert_eq!(entry["path"], "/items/42");
        assert_eq!(entry["status"], 201);
        assert_eq!(entry["request_id"], "order-7-line-3");
        assert_eq!(entry["error"], "");
        assert!(entry["duration_ms"].as_f64().unwrap() > 0.0, "{entry}");
        assert_eq!(entry["trace_id"].as_str().unwrap().len(), 32, "{entry}");
    }
    assert_eq!(outbound["trace_id"], inbound["trace_id"]);
    assert_eq!(outbound["endpoint"], addr.to_string());
    assert_eq!(outbound["attempts"], 1);
    assert_eq!(outbound["peer"], "");
    assert!(
        inbound["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{inbound}"
    );
    assert_eq!(inbound["endpoint"], "");
    // No mTLS here: the caller has an address but no proven identity.
    assert_eq!(inbound["peer_identity"], "");

    let spans = exporter.get_finished_spans().unwrap();
    assert!(
        spans
            .iter()
            .all(|span| span.span_context.trace_id().to_string() == outbound["trace_id"]),
        "the logged trace id is the trace's"
    );
}

// As above, over mTLS: the server's line names the SPIFFE ID the caller proved in the handshake.
#[tokio::test(flavor = "current_thread")]
async fn the_inbound_line_names_the_callers_proven_identity() {
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber =
        tracing_subscriber::registry().with(access_log_layer_with_writer(move || writer.clone()));
    let _default = tracing::subscriber::set_default(subscriber);

    let pki = Pki::new();
    let exporter = InMemorySpanExporter::default();
    let server_mesh = traced_mesh(
        &format!(
            "[telemetry]\naccess_log = true\n{}[servers.inventory]\ntls = {{ mode = \"strict\" }}\n",
            pki.identity_toml("inventory")
        ),
        &exporter,
        "inventory",
    );
    let (addr, _server) = serve(&server_mesh, "inventory", |_: Request<Body>| async {
        Ok::<_, Infallible>(Response::new(Body::empty()))
    })
    .await;
    let client_mesh = traced_mesh(
        &format!(
            "[telemetry]\naccess_log = true\n{}[services.inventory]\nidentity = \"{}\"\n\
             discovery = {{ kind = \"static\", endpoints = [\"{addr}\"] }}\n",
            pki.identity_toml("shop"),
            spiffe_id("inventory"),
        ),
        &exporter,
        "shop",
    );
    let mut client = client_mesh.http_client("inventory").unwrap();
    let response = tokio::time::timeout(
        Duration::from_secs(5),
        client.call(Request::get("/items").body(Body::empty()).unwrap()),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
    let entries: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("JSON: {line}")))
        .collect();
    let inbound = entries
        .iter()
        .find(|entry| entry["direction"] == "inbound")
        .unwrap_or_else(|| panic!("an inbound line: {text}"));
    let outbound = entries
        .iter()
        .find(|entry| entry["direction"] == "outbound")
        .unwrap_or_else(|| panic!("an outbound line: {text}"));
    assert_eq!(inbound["peer_identity"], spiffe_id("shop"), "{inbound}");
    assert_eq!(inbound["status"], 200);
    // A client's line has no caller: its peer is the endpoint, named by address.
    assert_eq!(outbound["peer_identity"], "", "{outbound}");
    assert_eq!(outbound["endpoint"], addr.to_string());
}
