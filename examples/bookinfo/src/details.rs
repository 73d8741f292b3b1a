//! details: a book's author, publisher, ISBN and so on, at `GET /details/{id}`.
//!
//! Its server accepts productpage only (mesh.toml); anyone else gets 403 from the mesh before
//! this code runs.

use http::{Method, Request, StatusCode};
use meshlib::Body;

use crate::catalogue;
use crate::web::{Answer, id_after, json, text};

/// Answers one request.
pub async fn handle(request: Request<Body>) -> Answer {
    if request.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only");
    }
    match id_after(request.uri().path(), "/details/").and_then(catalogue::book) {
        Some(book) => json(StatusCode::OK, &book.details),
        None => text(StatusCode::NOT_FOUND, "no such book"),
    }
}
