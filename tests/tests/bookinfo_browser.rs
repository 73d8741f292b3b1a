//! Bookinfo in a real browser (headless Chromium): the product page shows the reviews with the
//! stars of the version that served them, and reloading it under the 50/50 canary shows both
//! versions; productpage's admin dashboard shows its calls to details and reviews while readers
//! come. Screenshots
//! of both are left under the target directory (`test-artifacts/bookinfo-*.png`).

use std::time::Duration;

use bookinfo::{Bookinfo, Options, scenario};
use meshlib_tests::browser::{assert_png, chromium};
use meshlib_tests::telemetry::{artifact_dir, fetch};

/// The product page has no timers: a short budget is enough for it to load.
const PAGE_BUDGET: Duration = Duration::from_millis(500);

/// The dashboard polls `/stats` every second: three polls.
const DASHBOARD_BUDGET: Duration = Duration::from_millis(2500);

/// Reloads allowed to see both versions: a 50/50 split fails to show one of them in 30 loads
/// once in 500 million runs; it usually takes two or three.
const MAX_RELOADS: usize = 30;

/// The value of the first `data-version` attribute in `dom`.
fn reviews_version(dom: &str) -> &str {
    dom.split("data-version=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("a reviews section:\n{dom}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_product_page_and_a_dashboard_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let app =
        Bookinfo::start(Options::new(dir.path()).scenario(scenario::find("canary-v3").unwrap()))
            .await
            .unwrap();
    let page = format!("http://{}/productpage", app.ingress_addr());

    // Each load leaves a screenshot; one with red stars is kept.
    let screenshot = artifact_dir().join("bookinfo-productpage.png");
    let _ = std::fs::remove_file(&screenshot);
    let load_shot = dir.path().join("load.png");
    let load_shot_arg = format!("--screenshot={}", load_shot.display());
    let mut seen_v1 = false;
    let mut seen_v3 = false;
    for _ in 0..MAX_RELOADS {
        let dom = chromium(&page, PAGE_BUDGET, &["--dump-dom", &load_shot_arg]).await;
        assert!(dom.contains("<h1>The Comedy of Errors</h1>"), "{dom}");
        assert!(dom.contains("<dd>PublisherA</dd>"), "details: {dom}");
        match reviews_version(&dom) {
            "v1" => {
                assert!(!dom.contains("class=\"stars\""), "v1 shows no stars: {dom}");
                seen_v1 = true;
            }
            "v3" => {
                // Chromium's DOM keeps the attributes, and the stars as text.
                assert!(
                    dom.contains("data-stars=\"5\" data-color=\"red\" style=\"color: red\">★★★★★<"),
                    "{dom}"
                );
                assert!(
                    dom.contains("data-stars=\"4\" data-color=\"red\" style=\"color: red\">★★★★☆<"),
                    "{dom}"
                );
                std::fs::rename(&load_shot, &screenshot).unwrap();
                seen_v3 = true;
            }
            other => panic!("reviews {other} under a v1/v3 split: {dom}"),
        }
        if seen_v1 && seen_v3 {
            break;
        }
    }
    assert!(seen_v1 && seen_v3, "v1 seen: {seen_v1}, v3 seen: {seen_v3}");
    assert_png(&screenshot);

    // productpage's dashboard: cards for its calls to details and reviews and for its own
    // server, counting the page loads above.
    let dashboard = format!("http://{}/", app.workload("productpage").admin_addr());
    let screenshot = artifact_dir().join("bookinfo-dashboard.png");
    let _ = std::fs::remove_file(&screenshot);
    let shot = format!("--screenshot={}", screenshot.display());
    // Readers keep coming while it is open, so that its charts move.
    let ingress = app.ingress_addr();
    let readers = tokio::spawn(async move {
        loop {
            fetch(ingress, "/productpage").await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let dom = chromium(&dashboard, DASHBOARD_BUDGET, &["--dump-dom", &shot]).await;
    readers.abort();
    for (service, direction) in [
        ("details", "outbound"),
        ("reviews", "outbound"),
        ("productpage", "inbound"),
    ] {
        let card = dom
            .find(&format!("data-service=\"{service}\""))
            .map(|start| &dom[start..])
            .unwrap_or_else(|| panic!("a card for {service}:\n{dom}"));
        assert!(
            card.contains(&format!("data-direction=\"{direction}\"")),
            "{service}: {card}"
        );
        let total: u64 = card
            .split("<b class=\"total\">")
            .nth(1)
            .and_then(|rest| rest.split('<').next())
            .and_then(|total| total.parse().ok())
            .unwrap_or_else(|| panic!("a total for {service}:\n{card}"));
        assert!(total >= 2, "{service}: {total} requests");
    }
    assert_png(&screenshot);
}
