//! productpage: the page a reader sees, and its JSON API. It calls details and reviews through
//! the mesh, at once, and shows what came back; a service that did not answer in time costs the
//! page its section, never the page.
//!
//! | path | what |
//! | --- | --- |
//! | `/productpage?id=0` | the HTML page of a book |
//! | `/api/v1/products` | the books, as JSON |
//! | `/api/v1/products/{id}` | what the page shows, as JSON ([`Product`]) |
//! | `/login?user=jason`, `/logout` | sign in or out (a cookie); the signed-in user goes to reviews and ratings as `end-user` |
//!
//! An `end-user` header on the request signs in for that request alone (for curl).

use http::header::{LOCATION, SET_COOKIE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use meshlib::{Body, HttpClient};

use crate::catalogue::{self, BOOKS, Details};
use crate::reviews::{RatingAnswer, ReviewsAnswer};
use crate::web::{
    Answer, END_USER, cookie, current_trace_id, escape, get_json, header, id_after, json,
    query_param, respond, text,
};

/// What the page shows Bookinfo's readers when details did not answer.
pub const DETAILS_UNAVAILABLE: &str =
    "Sorry, product details are currently unavailable for this book.";

/// What the page shows when reviews did not answer.
pub const REVIEWS_UNAVAILABLE: &str =
    "Sorry, product reviews are currently unavailable for this book.";

/// The cookie that keeps the signed-in user.
const USER_COOKIE: &str = "user";

/// productpage's clients for the services it calls.
#[derive(Clone, Debug)]
pub struct ProductPage {
    details: HttpClient,
    reviews: HttpClient,
}

/// A book as the page shows it: `GET /api/v1/products/{id}`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Product {
    /// The product id.
    pub id: u32,
    /// The title.
    pub title: String,
    /// The blurb.
    pub summary: String,
    /// The signed-in user the page was made for.
    pub user: Option<String>,
    /// From details; `None` when it did not answer.
    pub details: Option<Details>,
    /// From reviews; `None` when it did not answer.
    pub reviews: Option<ReviewsAnswer>,
    /// Why details or reviews are missing, one line each.
    pub errors: Vec<String>,
    /// The trace this request is part of (when tracing is on), to find it in a trace viewer.
    pub trace_id: Option<String>,
}

impl ProductPage {
    /// A product page calling details and reviews through these clients.
    pub fn new(details: HttpClient, reviews: HttpClient) -> Self {
        Self { details, reviews }
    }

    /// Answers one request.
    pub async fn handle(self, request: Request<Body>) -> Answer {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "GET only");
        }
        let path = request.uri().path();
        let user = signed_in_user(&request);
        match path {
            "/" => redirect("/productpage", None),
            "/productpage" => {
                let id = query_param(&request, "id").map_or(Some(0), |id| id.parse().ok());
                match id.and_then(catalogue::book) {
                    Some(book) => {
                        let product = self.product(book, user.as_deref()).await;
                        respond(StatusCode::OK, "text/html; charset=utf-8", page(&product))
                    }
                    None => text(StatusCode::NOT_FOUND, "no such book"),
                }
            }
            "/login" => match query_param(&request, "user").and_then(valid_user) {
                Some(user) => redirect(
                    "/productpage",
                    Some(&format!("{USER_COOKIE}={user}; Path=/")),
                ),
                None => text(
                    StatusCode::BAD_REQUEST,
                    "sign in with ?user=<letters, digits, - or _>",
                ),
            },
            "/logout" => redirect(
                "/productpage",
                Some(&format!("{USER_COOKIE}=; Path=/; Max-Age=0")),
            ),
            "/api/v1/products" => {
                let books: Vec<_> = BOOKS
                    .iter()
                    .map(|book| serde_json::json!({ "id": book.id, "title": book.title }))
                    .collect();
                json(StatusCode::OK, &books)
            }
            _ => match id_after(path, "/api/v1/products/").and_then(catalogue::book) {
                Some(book) => json(StatusCode::OK, &self.product(book, user.as_deref()).await),
                None => text(StatusCode::NOT_FOUND, "no such book"),
            },
        }
    }

    /// Asks details and reviews about `book`, both at once.
    async fn product(&self, book: &catalogue::Book, user: Option<&str>) -> Product {
        let details_path = format!("/details/{}", book.id);
        let reviews_path = format!("/reviews/{}", book.id);
        let (details, reviews) = tokio::join!(
            get_json::<Details>(&self.details, &details_path, user),
            get_json::<ReviewsAnswer>(&self.reviews, &reviews_path, user),
        );
        let mut errors = Vec::new();
        let details = details
            .map_err(|error| errors.push(format!("details: {error}")))
            .ok();
        let reviews = reviews
            .map_err(|error| errors.push(format!("reviews: {error}")))
            .ok();
        if !errors.is_empty() {
            tracing::info!(?errors, "page rendered without some sections");
        }
        Product {
            id: book.id,
            title: book.title.to_owned(),
            summary: book.summary.to_owned(),
            user: user.map(str::to_owned),
            details,
            reviews,
            errors,
            trace_id: current_trace_id(),
        }
    }
}

/// The user the request is for: its `end-user` header, else the sign-in cookie.
fn signed_in_user(request: &Request<Body>) -> Option<String> {
    header(request, END_USER)
        .or_else(|| cookie(request, USER_COOKIE))
        .and_then(valid_user)
        .map(str::to_owned)
}

/// `user` if it is a plain name: it goes into headers and the page.
fn valid_user(user: &str) -> Option<&str> {
    let plain = !user.is_empty()
        && user.len() <= 32
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    plain.then_some(user)
}

fn redirect(to: &'static str, cookie: Option<&str>) -> Answer {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SEE_OTHER;
    response
        .headers_mut()
        .insert(LOCATION, HeaderValue::from_static(to));
    if let Some(cookie) = cookie.and_then(|cookie| HeaderValue::from_str(cookie).ok()) {
        response.headers_mut().insert(SET_COOKIE, cookie);
    }
    Ok(response)
}

/// The HTML page of `product`. Elements carry `data-*` attributes saying what they show (the
/// reviews version, each rating's stars and colour) for tests and scripts.
fn page(product: &Product) -> String {
    let details = match &product.details {
        Some(details) => format!(
            "<dl id=\"details\">\
             <dt>Author</dt><dd>{}</dd><dt>Year</dt><dd>{}</dd><dt>Type</dt><dd>{}</dd>\
             <dt>Pages</dt><dd>{}</dd><dt>Publisher</dt><dd>{}</dd><dt>Language</dt><dd>{}</dd>\
             <dt>ISBN-10</dt><dd>{}</dd><dt>ISBN-13</dt><dd>{}</dd></dl>",
            escape(&details.author),
            details.year,
            escape(&details.kind),
            details.pages,
            escape(&details.publisher),
            escape(&details.language),
            escape(&details.isbn_10),
            escape(&details.isbn_13),
        ),
        None => format!("<p class=\"error\" id=\"details-error\">{DETAILS_UNAVAILABLE}</p>"),
    };
    let reviews = match &product.reviews {
        Some(reviews) => reviews_html(reviews),
        None => format!(
            "<section id=\"reviews\" data-version=\"none\"><h2>Book Reviews</h2>\
             <p class=\"error\" id=\"reviews-error\">{REVIEWS_UNAVAILABLE}</p></section>"
        ),
    };
    let user = match &product.user {
        Some(user) => format!(
            "signed in as <b id=\"user\">{}</b> · <a href=\"/logout\">sign out</a>",
            escape(user)
        ),
        None => "<form action=\"/login\"><input name=\"user\" placeholder=\"user name\" \
                 size=\"10\"> <button>sign in</button></form>"
            .to_owned(),
    };
    let trace = product.trace_id.as_deref().map_or_else(String::new, |id| {
        format!("trace <code id=\"trace-id\">{id}</code>")
    });
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title} · Bookinfo on meshlib</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 0; color: #222; }}
header {{ background: #2d3e50; color: #fff; padding: .8em 2em; display: flex; justify-content: space-between; align-items: center; }}
header a {{ color: #fff; }}
main {{ max-width: 60em; margin: 0 auto; padding: 1em 2em; }}
.columns {{ display: flex; gap: 3em; }}
.columns > * {{ flex: 1; }}
dl {{ display: grid; grid-template-columns: max-content auto; gap: .3em 1em; }}
dt {{ font-weight: bold; }}
blockquote {{ margin: 0 0 1.2em; padding: .5em 1em; border-left: 4px solid #ccc; }}
.stars {{ font-size: 1.4em; }}
.error {{ color: #b00; }}
footer {{ color: #777; font-size: .85em; padding: 1em 2em; }}
</style></head>
<body>
<header><b>Bookinfo · proxyless on meshlib</b><span>{user}</span></header>
<main>
<h1>{title}</h1>
<p>{summary}</p>
<div class="columns">
<section><h2>Book Details</h2>{details}</section>
{reviews}
</div>
</main>
<footer>{trace}</footer>
</body></html>
"#,
        title = escape(&product.title),
        summary = escape(&product.summary),
    )
}

fn reviews_html(reviews: &ReviewsAnswer) -> String {
    let mut html = format!(
        "<section id=\"reviews\" data-version=\"{version}\"><h2>Book Reviews</h2>",
        version = escape(&reviews.version)
    );
    for review in &reviews.reviews {
        let rating = match &review.rating {
            Some(RatingAnswer::Stars { stars, color }) => {
                let full = (*stars).min(5) as usize;
                format!(
                    "<div class=\"stars\" data-stars=\"{stars}\" data-color=\"{color}\" \
                     style=\"color: {color}\">{}{}</div>",
                    "★".repeat(full),
                    "☆".repeat(5 - full),
                    color = escape(color),
                )
            }
            Some(RatingAnswer::Unavailable { error }) => {
                format!("<div class=\"error ratings-error\">{}</div>", escape(error))
            }
            None => String::new(),
        };
        html.push_str(&format!(
            "<blockquote class=\"review\"><p>{}</p><small>{}</small>{rating}</blockquote>",
            escape(&review.text),
            escape(&review.reviewer),
        ));
    }
    html.push_str(&format!(
        "<p class=\"served-by\">Reviews served by <b>reviews-{}</b></p></section>",
        escape(&reviews.version)
    ));
    html
}
