//! Routes match requests by header, path (exact, prefix by whole segments, anchored regex),
//! method and query parameter, the first matching route winning; they change request and
//! response headers and rewrite the path prefix, as the servers and callers see.

use meshlib::{HttpClient, Mesh, MeshConfig};
use meshlib_tests::TestServer;
use meshlib_tests::routing::{get_with, labelled_service_toml, send, server_of};

/// A v1 and a v2 server, labelled by version.
async fn servers() -> (TestServer, TestServer) {
    (TestServer::start("v1").await, TestServer::start("v2").await)
}

fn client(v1: &TestServer, v2: &TestServer, routes: &str) -> (Mesh, HttpClient) {
    let toml = labelled_service_toml(
        "reviews",
        &[(v1, &[("version", "v1")]), (v2, &[("version", "v2")])],
        routes,
    );
    let mesh = Mesh::new(MeshConfig::from_toml(&toml).unwrap()).unwrap();
    let client = mesh.http_client("reviews").unwrap();
    (mesh, client)
}

/// A route named `name` taking what `matches` (a TOML inline table, `{}` for everything) says,
/// to the `version` subset, marking its responses with `x-route: <name>` so that the test sees
/// which route a request took.
fn route(name: &str, matches: &str, version: &str) -> String {
    format!(
        "[[services.reviews.routes]]\n\
         name = \"{name}\"\n\
         match = {matches}\n\
         split = [{{ subset = {{ version = \"{version}\" }}, weight = 1 }}]\n\
         headers = {{ response = {{ set = {{ x-route = \"{name}\" }} }} }}\n"
    )
}

/// The server that answered `request` and the route it took (`x-route`), failing on an error.
async fn answer(
    client: &mut HttpClient,
    request: http::Request<meshlib::Body>,
) -> (String, String) {
    let response = send(client, request)
        .await
        .expect("the request should succeed");
    assert!(response.status().is_success(), "{}", response.status());
    let route = response
        .headers()
        .get("x-route")
        .map(|value| value.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (server_of(&response), route)
}

#[tokio::test]
async fn end_user_jason_goes_to_v2_ahead_of_the_default_route() {
    let (v1, v2) = servers().await;
    // Istio's bookinfo rule: jason sees reviews v2, everyone else v1.
    let routes = format!(
        "{}{}",
        route("jason", "{ headers = { end-user = \"jason\" } }", "v2"),
        route("everyone", "{}", "v1"),
    );
    let (_mesh, mut client) = client(&v1, &v2, &routes);

    for _ in 0..50 {
        let jason = answer(
            &mut client,
            get_with("/reviews/0", &[("end-user", "jason")]),
        )
        .await;
        assert_eq!(jason, ("v2".to_owned(), "jason".to_owned()));
        let anonymous = answer(&mut client, get_with("/reviews/0", &[])).await;
        assert_eq!(anonymous, ("v1".to_owned(), "everyone".to_owned()));
    }
    // The value must match whole; header names are not case-sensitive.
    for (header, value, expected) in [
        ("end-user", "jasonx", "v1"),
        ("end-user", "Jason", "v1"),
        ("end-user", "", "v1"),
        ("End-User", "jason", "v2"),
    ] {
        let (server, _) = answer(&mut client, get_with("/reviews/0", &[(header, value)])).await;
        assert_eq!(server, expected, "{header}: {value:?}");
    }
    assert_eq!((v1.hits(), v2.hits()), (53, 51));
}

#[tokio::test]
async fn the_first_matching_route_wins() {
    let (v1, v2) = servers().await;
    // The catch-all first: the jason rule behind it never sees a request.
    let routes = format!(
        "{}{}",
        route("everyone", "{}", "v1"),
        route("jason", "{ headers = { end-user = \"jason\" } }", "v2"),
    );
    let (_mesh, mut client) = client(&v1, &v2, &routes);

    for _ in 0..20 {
        let jason = answer(
            &mut client,
            get_with("/reviews/0", &[("end-user", "jason")]),
        )
        .await;
        assert_eq!(jason, ("v1".to_owned(), "everyone".to_owned()));
    }
    assert_eq!(v2.hits(), 0);
}

/// A request (method, path, headers) and the route expected to take it: `""` for none, that is
/// the default route.
type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);

#[tokio::test]
async fn paths_methods_queries_and_headers_match_as_documented() {
    let (v1, v2) = servers().await;
    let routes = [
        route("exact", "{ path = { exact = \"/exact/1\" } }", "v1"),
        route("prefix", "{ path = { prefix = \"/api\" } }", "v1"),
        route("slash", "{ path = { prefix = \"/docs/\" } }", "v1"),
        route("regex", "{ path = { regex = \"/reviews/[0-9]+\" } }", "v2"),
        route("post", "{ method = \"POST\" }", "v2"),
        route("query", "{ query = { debug = \"1\" } }", "v2"),
        route("present", "{ query = { trace = { present = true } } }", "v2"),
        route(
            "tenant",
            "{ headers = { x-tenant = { regex = \"team-[a-z]+\" } } }",
            "v2",
        ),
        route(
            "anonymous",
            "{ path = { exact = \"/who\" }, headers = { authorization = { present = false } } }",
            "v1",
        ),
        route(
            "all-of",
            "{ method = \"PUT\", path = { prefix = \"/both\" }, headers = { x-b = { present = true } } }",
            "v2",
        ),
    ]
    .concat();
    let (_mesh, mut client) = client(&v1, &v2, &routes);

    let request = |method: &str, path: &str, headers: &[(&str, &str)]| {
        let mut request = http::Request::builder().method(method).uri(path);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(meshlib::Body::empty()).unwrap()
    };
    let cases: &[Case<'_>] = &[
        ("GET", "/exact/1", &[], "exact"),
        ("GET", "/exact/1?x=y", &[], "exact"),
        ("GET", "/exact/1/", &[], ""),
        ("GET", "/exact/10", &[], ""),
        ("GET", "/exact", &[], ""),
        ("GET", "/api", &[], "prefix"),
        ("GET", "/api/", &[], "prefix"),
        ("GET", "/api/v1/x", &[], "prefix"),
        ("GET", "/api?x=1", &[], "prefix"),
        ("GET", "/apix", &[], ""),
        ("GET", "/ap", &[], ""),
        // A prefix written with a trailing slash still means whole segments, and the bare
        // directory too.
        ("GET", "/docs", &[], "slash"),
        ("GET", "/docs/a", &[], "slash"),
        ("GET", "/docsx", &[], ""),
        // Regular expressions must match the whole path.
        ("GET", "/reviews/42", &[], "regex"),
        ("GET", "/reviews/42/x", &[], ""),
        ("GET", "/x/reviews/42", &[], ""),
        ("GET", "/reviews/ab", &[], ""),
        ("POST", "/anything", &[], "post"),
        // An earlier route takes the request whatever the later ones say.
        ("POST", "/api/x", &[], "prefix"),
        ("GET", "/q?debug=1", &[], "query"),
        ("GET", "/q?a=2&debug=1&b", &[], "query"),
        ("GET", "/q?debug=10", &[], ""),
        ("GET", "/q?xdebug=1", &[], ""),
        ("GET", "/q?debug", &[], ""),
        ("GET", "/q?trace", &[], "present"),
        ("GET", "/q?trace=", &[], "present"),
        ("GET", "/q?a=trace", &[], ""),
        ("GET", "/t", &[("x-tenant", "team-blue")], "tenant"),
        ("GET", "/t", &[("x-tenant", "team-blue-2")], ""),
        ("GET", "/t", &[("x-tenant", "my-team-blue")], ""),
        ("GET", "/who", &[], "anonymous"),
        ("GET", "/who", &[("authorization", "Bearer x")], ""),
        ("PUT", "/both/1", &[("x-b", "")], "all-of"),
        ("PUT", "/both/1", &[], ""),
        ("GET", "/both/1", &[("x-b", "1")], ""),
    ];
    for (method, path, headers, expected) in cases {
        let (_, route) = answer(&mut client, request(method, path, headers)).await;
        assert_eq!(route, *expected, "{method} {path} {headers:?}");
    }
}

#[tokio::test]
async fn request_and_response_headers_are_changed_as_the_route_says() {
    let (v1, v2) = servers().await;
    v1.record();
    v1.set_header("x-internal", "secret");
    v1.set_header("x-multi", "from-server");
    let routes = "[[services.reviews.routes]]\n\
         split = [{ subset = { version = \"v1\" }, weight = 1 }]\n\
         [services.reviews.routes.headers.request]\n\
         add = { x-added = \"yes\", x-multi = \"two\" }\n\
         set = { x-set = \"new\" }\n\
         remove = [\"x-secret\"]\n\
         [services.reviews.routes.headers.response]\n\
         add = { x-multi = \"from-route\" }\n\
         set = { x-frame-options = \"DENY\", x-test-server = \"renamed\" }\n\
         remove = [\"x-internal\"]\n";
    let (_mesh, mut client) = client(&v1, &v2, routes);

    let request = get_with(
        "/reviews/1",
        &[("x-multi", "one"), ("x-set", "old"), ("x-secret", "s3cret")],
    );
    let response = send(&mut client, request).await.unwrap();

    let received = v1.received();
    assert_eq!(received.len(), 1);
    let headers = &received[0].headers;
    let all = |name: &str| -> Vec<&str> {
        headers
            .get_all(name)
            .iter()
            .map(|value| value.to_str().unwrap())
            .collect()
    };
    assert_eq!(all("x-added"), ["yes"]);
    assert_eq!(all("x-multi"), ["one", "two"], "add keeps what was there");
    assert_eq!(all("x-set"), ["new"], "set replaces");
    assert!(all("x-secret").is_empty(), "remove removes");

    let headers = response.headers();
    let all = |name: &str| -> Vec<&str> {
        headers
            .get_all(name)
            .iter()
            .map(|value| value.to_str().unwrap())
            .collect()
    };
    assert_eq!(all("x-internal"), Vec::<&str>::new());
    assert_eq!(all("x-multi"), ["from-server", "from-route"]);
    assert_eq!(all("x-frame-options"), ["DENY"]);
    assert_eq!(all("x-test-server"), ["renamed"]);
}

#[tokio::test]
async fn a_prefix_rewrite_changes_the_path_the_server_sees_and_keeps_the_query() {
    let (v1, v2) = servers().await;
    v1.record();
    let routes = "[[services.reviews.routes]]\n\
         match = { path = { prefix = \"/old\" } }\n\
         prefix_rewrite = \"/new\"\n\
         split = [{ subset = { version = \"v1\" }, weight = 1 }]\n\
         [[services.reviews.routes]]\n\
         match = { path = { prefix = \"/strip/\" } }\n\
         prefix_rewrite = \"/\"\n\
         split = [{ subset = { version = \"v1\" }, weight = 1 }]\n\
         [[services.reviews.routes]]\n\
         match = { path = { prefix = \"/api/v1\" } }\n\
         prefix_rewrite = \"/v2/\"\n\
         split = [{ subset = { version = \"v1\" }, weight = 1 }]\n";
    let (_mesh, mut client) = client(&v1, &v2, routes);

    let cases = [
        ("/old/x?q=1&r=2", "/new/x?q=1&r=2"),
        ("/old", "/new"),
        ("/old/", "/new/"),
        ("http://reviews/old/a/b?z", "/new/a/b?z"),
        ("/strip/a/b?z=1", "/a/b?z=1"),
        ("/strip", "/"),
        ("/api/v1/users/7", "/v2/users/7"),
        ("/api/v1", "/v2/"),
        // Not under any prefix: the default route, unchanged.
        ("/older/x", "/older/x"),
    ];
    for (sent, _) in cases {
        let response = send(&mut client, get_with(sent, &[])).await.unwrap();
        assert!(response.status().is_success(), "{sent}");
    }
    let seen: Vec<String> = v1.received().into_iter().map(|r| r.path).collect();
    // The default route may also have sent `/older/x` to v2.
    let expected: Vec<&str> = cases
        .iter()
        .map(|(_, rewritten)| *rewritten)
        .filter(|path| *path != "/older/x" || v2.hits() == 0)
        .collect();
    assert_eq!(seen, expected);
}
