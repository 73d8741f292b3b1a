//! Bookinfo end to end: the whole application (`examples/bookinfo`) started in this process on
//! free loopback ports, driven through its ingress as a reader's browser or curl would, its
//! routes switched while it runs by rewriting the configuration file it follows.

use std::collections::BTreeMap;
use std::time::Duration;

use bookinfo::productpage::{Product, REVIEWS_UNAVAILABLE};
use bookinfo::reviews::RatingAnswer;
use bookinfo::{Bookinfo, END_USER, Options, scenario};
use http::{Method, StatusCode};
use meshlib_tests::mtls::{self, identity_toml};
use meshlib_tests::telemetry::{fetch_with, provider, text_attribute};
use opentelemetry::trace::SpanKind;
use opentelemetry_sdk::trace::InMemorySpanExporter;

/// Starts Bookinfo running `scenario`, its state in a temporary directory.
async fn start(scenario: &str) -> (Bookinfo, tempfile::TempDir) {
    start_with(Options::new(""), scenario).await
}

async fn start_with(mut options: Options, scenario: &str) -> (Bookinfo, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    options.state_dir = dir.path().to_owned();
    let options = options.scenario(scenario::find(scenario).unwrap());
    (Bookinfo::start(options).await.unwrap(), dir)
}

/// `GET path` through the ingress, as `user` if given: status and body.
async fn get(app: &Bookinfo, path: &str, user: Option<&str>) -> (StatusCode, String) {
    let headers: Vec<(&str, &str)> = user.map(|user| (END_USER, user)).into_iter().collect();
    let (status, _, body) = fetch_with(app.ingress_addr(), path, &headers).await;
    (status, body)
}

/// The JSON API's view of book 0, as `user` if given.
async fn product(app: &Bookinfo, user: Option<&str>) -> Product {
    let (status, body) = get(app, "/api/v1/products/0", user).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// The reviews version a product was served by (`none` without reviews).
fn version(product: &Product) -> String {
    product
        .reviews
        .as_ref()
        .map_or_else(|| "none".to_owned(), |reviews| reviews.version.clone())
}

/// Waits up to 10 s for analytics to have counted `events`, then checks it counts no more.
async fn assert_events(app: &Bookinfo, events: u64) {
    let counted = tokio::time::timeout(Duration::from_secs(10), async {
        while app.analytics().views().events < events {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let views = app.analytics().views();
    assert!(
        counted.is_ok() && views.events == events,
        "{events} expected, {views:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_product_page_shows_each_reviews_version() {
    // No routes: reviews' round robin serves v1, v2 and v3 in turn.
    let (app, _dir) = start("default").await;
    let mut pages = BTreeMap::new();
    for _ in 0..6 {
        let (status, page) = get(&app, "/productpage", None).await;
        assert_eq!(status, StatusCode::OK);
        assert!(page.contains("<h1>The Comedy of Errors</h1>"), "{page}");
        assert!(page.contains("<dd>PublisherA</dd>"), "details: {page}");
        let version = page
            .split("data-version=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap()
            .to_owned();
        pages.insert(version, page);
    }
    assert_eq!(pages.keys().collect::<Vec<_>>(), ["v1", "v2", "v3"]);

    let v1 = &pages["v1"];
    assert!(v1.contains("Reviews served by <b>reviews-v1</b>"));
    assert!(v1.contains("An extremely entertaining play"));
    assert!(!v1.contains("class=\"stars\""), "v1 shows no stars: {v1}");
    for (version, color) in [("v2", "black"), ("v3", "red")] {
        let page = &pages[version];
        assert!(page.contains(&format!("Reviews served by <b>reviews-{version}</b>")));
        // Reviewer1 gave 5 stars, Reviewer2 4, in the version's colour.
        assert!(
            page.contains(&format!(
                "data-stars=\"5\" data-color=\"{color}\" style=\"color: {color}\">★★★★★<"
            )),
            "{page}"
        );
        assert!(
            page.contains(&format!(
                "data-stars=\"4\" data-color=\"{color}\" style=\"color: {color}\">★★★★☆<"
            )),
            "{page}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_canary_split_is_honoured_and_analytics_counts_each_rated_view() {
    let (app, _dir) = start("all-v1").await;
    for _ in 0..5 {
        assert_eq!(version(&product(&app, None).await), "v1");
    }
    // v1 looks nothing up: no events.
    assert_events(&app, 0).await;

    app.switch_scenario(scenario::find("canary-v3").unwrap())
        .await
        .unwrap();
    let mut versions: BTreeMap<String, u64> = BTreeMap::new();
    for _ in 0..200 {
        *versions
            .entry(version(&product(&app, None).await))
            .or_default() += 1;
    }
    // 50/50 over 200 requests: each side is 100 ± 7 (one standard deviation); outside 50..=150
    // (seven) happens once in 10^12 runs.
    let (v1, v3) = (versions["v1"], versions["v3"]);
    assert_eq!(v1 + v3, 200, "{versions:?}");
    assert!((50..=150).contains(&v1), "{versions:?}");

    // Each view served by v3 looked its ratings up once, and each lookup is one event.
    assert_events(&app, v3).await;
    assert_eq!(app.analytics().views().per_book[&0], v3);
    let (status, body) = get(&app, "/analytics/views", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains(&format!("\"events\":{v3}")), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jason_is_routed_to_v2() {
    let (app, _dir) = start("jason-v2").await;
    for _ in 0..10 {
        let jason = product(&app, Some("jason")).await;
        assert_eq!(version(&jason), "v2");
        assert_eq!(jason.user.as_deref(), Some("jason"));
        assert_eq!(version(&product(&app, Some("alice")).await), "v1");
        assert_eq!(version(&product(&app, None).await), "v1");
    }
    // The sign-in cookie routes as the header does.
    let (status, page) = {
        let (status, _, body) = fetch_with(
            app.ingress_addr(),
            "/productpage",
            &[("cookie", "user=jason")],
        )
        .await;
        (status, body)
    };
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("data-version=\"v2\""), "{page}");
    assert!(page.contains("<b id=\"user\">jason</b>"), "{page}");
}

/// The fault-injection scenario with short times: jason's ratings calls held 2 s against a
/// 400 ms timeout for his reviews (the shipped scenario holds 7 s against 3 s).
const FAULT_FOR_TESTS: &str = r#"
[[services.reviews.routes]]
name = "jason to v2"
match = { headers = { end-user = "jason" } }
split = [{ subset = { version = "v2" }, weight = 100 }]
timeout = "400ms"

[[services.reviews.routes]]
name = "everybody else to v1"
split = [{ subset = { version = "v1" }, weight = 100 }]

[[services.ratings.routes]]
name = "2 s delay for jason"
match = { headers = { end-user = "jason" } }
fault = { delay = "2s" }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_ratings_service_degrades_the_page_gracefully() {
    let (app, _dir) = start("default").await;
    app.switch(FAULT_FOR_TESTS, "the test's fault scenario")
        .await
        .unwrap();

    // jason's page comes after productpage's timeout for reviews, not the delay, with its
    // details and without its reviews.
    let started = tokio::time::Instant::now();
    let (status, page) = get(&app, "/productpage", Some("jason")).await;
    let waited = started.elapsed();
    assert_eq!(status, StatusCode::OK);
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_millis(1500),
        "{waited:?}"
    );
    assert!(
        page.contains("<dd>PublisherA</dd>"),
        "details still shown: {page}"
    );
    assert!(page.contains(REVIEWS_UNAVAILABLE), "{page}");
    let jason = product(&app, Some("jason")).await;
    assert!(jason.reviews.is_none());
    assert!(jason.details.is_some());
    assert!(
        jason
            .errors
            .iter()
            .any(|error| error.starts_with("reviews:")),
        "{:?}",
        jason.errors
    );

    // Everybody else is served at once, by v1.
    let started = tokio::time::Instant::now();
    let other = product(&app, None).await;
    assert!(started.elapsed() < Duration::from_millis(400));
    assert_eq!(version(&other), "v1");
    assert!(other.errors.is_empty(), "{:?}", other.errors);

    // Without the fault, jason's ratings come back.
    app.switch_scenario(scenario::find("jason-v2").unwrap())
        .await
        .unwrap();
    let jason = product(&app, Some("jason")).await;
    let reviews = jason.reviews.expect("reviews");
    assert_eq!(reviews.version, "v2");
    assert!(
        reviews
            .reviews
            .iter()
            .all(|review| matches!(review.rating, Some(RatingAnswer::Stars { .. }))),
        "{reviews:?}"
    );
}

/// A mesh configuration for a caller with `account`'s identity (from the files Bookinfo wrote)
/// calling `service` of `app` directly, and `settings` for the service.
fn caller_toml(app: &Bookinfo, account: &str, service: &str, settings: &str) -> String {
    let certs = app.certs_dir();
    let files = meshlib::config::IdentityConfig::new(
        certs.join(format!("{account}.pem")),
        certs.join(format!("{account}-key.pem")),
        certs.join("bundle.pem"),
    );
    format!(
        "{}[services.{service}]\nidentity = \"spiffe://cluster.local/ns/bookinfo/sa/{service}\"\n\
         discovery = {{ kind = \"static\", endpoints = [\"{}\"] }}\n\
         retry = {{ max_attempts = 1 }}\n{settings}\n",
        identity_toml(&files),
        app.workload(service).addr()
    )
}

/// Asks ratings for book 0's ratings with `account`'s identity.
async fn ratings_as(app: &Bookinfo, account: &str) -> Result<usize, tonic::Status> {
    let config = caller_toml(app, account, "ratings", "protocol = \"http2\"");
    let mesh = meshlib::Mesh::new(meshlib::MeshConfig::from_toml(&config).unwrap()).unwrap();
    let channel = meshlib_grpc::channel(&mesh, "ratings").unwrap();
    let reply = bookinfo::ratings::get_ratings(channel, 0, None).await?;
    Ok(reply.ratings.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_without_the_right_identity_are_refused() {
    let (app, _dir) = start("default").await;

    // details serves productpage, and refuses reviews, which the same CA vouches for.
    let mut productpage = mtls::client(&caller_toml(&app, "productpage", "details", ""), "details");
    let answer = mtls::send(&mut productpage, Method::GET, "/details/0")
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    let mut reviews = mtls::client(&caller_toml(&app, "reviews", "details", ""), "details");
    let answer = mtls::send(&mut reviews, Method::GET, "/details/0")
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert_eq!(
        answer.body,
        "forbidden: no authorization rule allows this request\n"
    );

    // ratings serves reviews, and refuses productpage, over gRPC too.
    assert_eq!(ratings_as(&app, "reviews").await.unwrap(), 2);
    let refused = ratings_as(&app, "productpage").await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");

    // A caller without a certificate does not get past the handshake.
    let mut plaintext = mtls::client(
        &format!(
            "[services.details]\ndiscovery = {{ kind = \"static\", endpoints = [\"{}\"] }}\n\
             retry = {{ max_attempts = 1 }}\n",
            app.workload("details").addr()
        ),
        "details",
    );
    let refused = mtls::send(&mut plaintext, Method::GET, "/details/0").await;
    assert!(refused.is_err(), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_crosses_http_grpc_and_kafka() {
    meshlib_tests::init_tracing();
    let exporter = InMemorySpanExporter::default();
    let mut options = Options::new("");
    let spans = exporter.clone();
    options.tracer_providers = Some(std::sync::Arc::new(move |name: &str| {
        provider(&spans, name)
    }));
    let (app, _dir) = start_with(options, "all-v3").await;

    let page = product(&app, None).await;
    assert_eq!(version(&page), "v3");
    let trace_id = page.trace_id.expect("the page's trace id");

    // Kafka: analytics handled ratings' event under the same trace, carried in the record's
    // headers.
    let event = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(event) = app.analytics().event_in_trace(&trace_id) {
                return event;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("analytics counted the page's event");
    assert_eq!(event.product_id, 0);

    // HTTP and gRPC: a server span at every hop, in the page's trace.
    let spans: Vec<_> = exporter
        .get_finished_spans()
        .unwrap()
        .into_iter()
        .filter(|span| span.span_context.trace_id().to_string() == trace_id)
        .collect();
    let servers: Vec<String> = spans
        .iter()
        .filter(|span| span.span_kind == SpanKind::Server)
        .filter_map(|span| text_attribute(span, "meshlib.server"))
        .collect();
    for server in ["ingress", "productpage", "details", "reviews", "ratings"] {
        assert!(
            servers.iter().any(|s| s == server),
            "{server} in {servers:?}"
        );
    }
    let ratings = spans
        .iter()
        .find(|span| {
            span.span_kind == SpanKind::Server
                && text_attribute(span, "meshlib.server").as_deref() == Some("ratings")
        })
        .unwrap();
    assert_eq!(
        text_attribute(ratings, "url.path").as_deref(),
        Some("/bookinfo.Ratings/GetRatings")
    );
    // Kafka, as spans: ratings' `send` and analytics' `process`, its child, in the same trace
    // (the process span ends when the handler returns, which may be just after the count).
    let (send, process) = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let finished = exporter.get_finished_spans().unwrap();
            let in_trace = |name: &str, kind: SpanKind| {
                finished
                    .iter()
                    .find(|span| {
                        span.name == name
                            && span.span_kind == kind
                            && span.span_context.trace_id().to_string() == trace_id
                    })
                    .cloned()
            };
            if let (Some(send), Some(process)) = (
                in_trace("send rating-viewed", SpanKind::Producer),
                in_trace("process rating-viewed", SpanKind::Consumer),
            ) {
                return (send, process);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the send and process spans of the page's event are exported");
    assert_eq!(process.parent_span_id, send.span_context.span_id());
    assert!(
        exporter
            .get_finished_spans()
            .unwrap()
            .iter()
            .any(|span| span.span_context.span_id() == send.parent_span_id),
        "the send span's parent is a span of the ratings hop: {send:#?}"
    );

    // Each server span is the child of its caller's attempt, so the hops nest.
    assert!(
        spans
            .iter()
            .filter(|span| span.span_kind == SpanKind::Server)
            .filter(|span| text_attribute(span, "meshlib.server").as_deref() != Some("ingress"))
            .all(|span| span.parent_span_is_remote
                && spans
                    .iter()
                    .any(|parent| parent.span_context.span_id() == span.parent_span_id)),
        "{spans:#?}"
    );
}
