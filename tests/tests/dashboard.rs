//! The admin dashboard in a real browser (headless Chromium): the page renders a card per service,
//! its charts fill in from `/stats` while traffic flows, its counters follow the traffic from one
//! load to the next, and a screenshot is left under the target directory to look at
//! (`test-artifacts/dashboard.png`).
//!
//! Each load is one headless Chromium run (see `meshlib_tests::browser`) of a few virtual seconds:
//! a few polls of `/stats`. The DOM is read after them with `--dump-dom`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use meshlib::{Body, Mesh, MeshConfig};
use meshlib_tests::TestServer;
use meshlib_tests::browser::{assert_png, chromium};
use meshlib_tests::telemetry::{artifact_dir, fetch, serve};
use tower_service::Service as _;

/// Virtual time each load runs for: the page polls at 0, 1, 2 and 3 s.
const BUDGET: Duration = Duration::from_millis(3500);

/// The text of the first element after `anchor` in `dom` that starts with `open` (such as
/// `<b class="total">`), up to the next tag.
fn text_after<'a>(dom: &'a str, anchor: &str, open: &str) -> Option<&'a str> {
    let rest = &dom[dom.find(anchor)?..];
    let rest = &rest[rest.find(open)? + open.len()..];
    rest.split('<').next()
}

/// The card of `service` in `dom`: the DOM from its opening tag on.
fn card<'a>(dom: &'a str, service: &str) -> &'a str {
    let anchor = format!("data-service=\"{service}\"");
    let start = dom
        .find(&anchor)
        .unwrap_or_else(|| panic!("a card for {service}:\n{dom}"));
    &dom[start..]
}

fn attribute(element: &str, name: &str) -> Option<u64> {
    let start = element.find(&format!("{name}=\""))? + name.len() + 2;
    element[start..].split('"').next()?.parse().ok()
}

/// Sends requests through `client` until `stop`, about one per millisecond, and one in ten to
/// the server at `front` from outside the mesh. Returns how many went through `client`.
fn traffic(
    mut client: meshlib::HttpClient,
    front: SocketAddr,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut sent = 0;
        // Bounded whatever happens to the test: at most 30 s.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !stop.load(Ordering::Relaxed) && tokio::time::Instant::now() < deadline {
            let _ = client
                .call(Request::get("/products").body(Body::empty()).unwrap())
                .await;
            sent += 1;
            if sent % 10 == 0 {
                fetch(front, "/").await;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        sent
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_renders_and_follows_the_traffic() {
    let steady = TestServer::start("steady").await;
    let slow = TestServer::start("slow").await;
    slow.set_delay(Duration::from_millis(3));
    // Fails one request in three, never three in a row: errors, but no ejection.
    let flaky = TestServer::start("flaky").await;
    flaky.script_statuses((0..3000).map(|i| if i % 3 == 2 { 503 } else { 200 }));
    // Fails everything: ejected after three failures, for the rest of the test.
    let dead = TestServer::start("dead").await;
    dead.set_status(500);
    let mesh = Mesh::new(
        MeshConfig::from_toml(&format!(
            "[services.dashboard-shop]\nbalancer = \"round-robin\"\n\
             discovery = {{ kind = \"static\", endpoints = [\"{}\", \"{}\", \"{}\", \"{}\"] }}\n\
             retry = {{ max_attempts = 1 }}\n\
             breaker = {{ consecutive_failures = 3, failure_rate_percent = 0, base_ejection = \"60s\" }}\n",
            steady.addr(),
            slow.addr(),
            flaky.addr(),
            dead.addr()
        ))
        .unwrap(),
    )
    .unwrap();
    let (front, _front) = serve(&mesh, "dashboard-front", |_: Request<Body>| async {
        Ok::<_, Infallible>(Response::new(Body::from("front")))
    })
    .await;
    let admin = mesh.admin("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let url = format!("http://{}/", admin.addr());

    let stop = Arc::new(AtomicBool::new(false));
    let shop = traffic(
        mesh.http_client("dashboard-shop").unwrap(),
        front,
        Arc::clone(&stop),
    );
    for _ in 0..20 {
        fetch(front, "/").await;
    }
    wait_for_requests(admin.addr(), 50).await;

    // First load: a card per service, charts drawn from the polls' differences.
    let dom = chromium(&url, BUDGET, &["--dump-dom"]).await;
    let polls: u64 = text_after(&dom, "id=\"polls\"", ">")
        .and_then(|polls| polls.parse().ok())
        .unwrap_or_else(|| panic!("a poll counter:\n{dom}"));
    assert!(polls >= 3, "the page kept polling: {polls}\n{dom}");
    let shop_card = card(&dom, "dashboard-shop");
    assert!(shop_card.contains("data-direction=\"outbound\""));
    let points = attribute(shop_card, "data-points").unwrap();
    assert!(points >= 2, "chart points: {points}");
    let first_total: u64 = text_after(shop_card, "total", "<b class=\"total\">")
        .and_then(|total| total.parse().ok())
        .unwrap_or_else(|| panic!("a total:\n{shop_card}"));
    assert!(first_total >= 50, "{first_total}");
    // Lines were drawn: a path with at least one segment in the rate chart, and bars in the
    // endpoint-health chart, one of them the ejected endpoint.
    let rate_line = text_after(shop_card, "<svg", "<path d=\"").unwrap_or("");
    assert!(
        rate_line.starts_with('M') && rate_line.contains('L'),
        "a rate line:\n{shop_card}"
    );
    assert!(
        shop_card.contains("class=\"ejected\""),
        "an ejected bar:\n{shop_card}"
    );
    let front_card = card(&dom, "dashboard-front");
    assert!(front_card.contains("data-direction=\"inbound\""));
    let front_total: u64 = text_after(front_card, "total", "<b class=\"total\">")
        .and_then(|total| total.parse().ok())
        .unwrap();
    assert!(front_total >= 20, "{front_total}");

    // Second load, after more traffic: the counters moved on, and a screenshot to look at.
    wait_for_requests(admin.addr(), first_total + 40).await;
    let screenshot = artifact_dir().join("dashboard.png");
    let _ = std::fs::remove_file(&screenshot);
    let dom = chromium(
        &url,
        BUDGET,
        &[
            "--dump-dom",
            &format!("--screenshot={}", screenshot.display()),
        ],
    )
    .await;
    let second_total: u64 =
        text_after(card(&dom, "dashboard-shop"), "total", "<b class=\"total\">")
            .and_then(|total| total.parse().ok())
            .unwrap();
    assert!(
        second_total > first_total,
        "{first_total} then {second_total}"
    );
    assert_png(&screenshot);

    stop.store(true, Ordering::Relaxed);
    let sent = shop.await.unwrap();
    assert!(sent >= second_total, "{sent} sent, {second_total} shown");
}

/// Waits until the admin endpoint has counted `count` requests to the shop.
async fn wait_for_requests(admin: SocketAddr, count: u64) {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let (status, stats) = fetch(admin, "/stats").await;
            assert_eq!(status, StatusCode::OK);
            let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
            if stats["clients"][0]["requests"].as_u64().unwrap_or(0) >= count {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("traffic counted in time");
}
