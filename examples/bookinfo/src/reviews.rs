//! reviews: a book's reviews at `GET /reviews/{id}`, in three versions, as Bookinfo's:
//! v1 shows no ratings, v2 asks ratings (over gRPC) and shows black stars, v3 red stars.
//!
//! Its server accepts productpage only (mesh.toml). Its calls to ratings carry the caller's
//! `end-user`, which the mesh's routes for ratings match (the fault-injection scenario), and what
//! is left of productpage's deadline.

use http::{Method, Request, StatusCode};
use meshlib::Body;
use meshlib_grpc::GrpcChannel;

use crate::catalogue;
use crate::ratings;
use crate::web::{Answer, END_USER, header, id_after, json, text};

/// What v2 and v3 show instead of stars when ratings does not answer (Bookinfo's words).
pub const RATINGS_UNAVAILABLE: &str = "Ratings service is currently unavailable";

/// One version of reviews.
#[derive(Clone, Debug)]
pub struct Reviews {
    version: Version,
    ratings: Option<GrpcChannel>,
}

/// Which reviews.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// No ratings.
    V1,
    /// Black stars.
    V2,
    /// Red stars.
    V3,
}

impl Version {
    /// Every version.
    pub const ALL: [Self; 3] = [Self::V1, Self::V2, Self::V3];

    /// `v1`, `v2` or `v3`: the endpoints' `version` label.
    pub fn label(self) -> &'static str {
        match self {
            Self::V1 => "v1",
            Self::V2 => "v2",
            Self::V3 => "v3",
        }
    }

    /// The colour of its stars; `None` for v1, which shows none.
    fn star_color(self) -> Option<&'static str> {
        match self {
            Self::V1 => None,
            Self::V2 => Some("black"),
            Self::V3 => Some("red"),
        }
    }
}

/// The answer of `GET /reviews/{id}`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ReviewsAnswer {
    /// The book.
    pub id: u32,
    /// The version that answered: `v1`, `v2` or `v3`.
    pub version: String,
    /// The reviews.
    pub reviews: Vec<ReviewAnswer>,
}

/// One review in a [`ReviewsAnswer`].
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ReviewAnswer {
    /// Who wrote it.
    pub reviewer: String,
    /// What they wrote.
    pub text: String,
    /// Stars and colour (v2, v3), or why there are none.
    pub rating: Option<RatingAnswer>,
}

/// A reviewer's rating as reviews shows it.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum RatingAnswer {
    /// Ratings answered.
    Stars {
        /// 1 to 5.
        stars: u32,
        /// `black` (v2) or `red` (v3).
        color: String,
    },
    /// Ratings did not answer.
    Unavailable {
        /// [`RATINGS_UNAVAILABLE`].
        error: String,
    },
}

impl Reviews {
    /// Version `version`, asking ratings through `ratings` (v2 and v3 need it).
    pub fn new(version: Version, ratings: Option<GrpcChannel>) -> Self {
        Self { version, ratings }
    }

    /// Answers one request.
    pub async fn handle(self, request: Request<Body>) -> Answer {
        if request.method() != Method::GET {
            return text(StatusCode::METHOD_NOT_ALLOWED, "GET only");
        }
        let Some(book) = id_after(request.uri().path(), "/reviews/").and_then(catalogue::book)
        else {
            return text(StatusCode::NOT_FOUND, "no such book");
        };
        let user = header(&request, END_USER);
        let stars = match (self.version.star_color(), self.ratings) {
            (Some(color), Some(channel)) => Some(
                ratings::get_ratings(channel, book.id, user)
                    .await
                    .map(|reply| (reply, color)),
            ),
            _ => None,
        };
        if let Some(Err(status)) = &stars {
            tracing::info!(code = ?status.code(), message = status.message(), "ratings did not answer");
        }
        let reviews = book
            .reviews
            .iter()
            .map(|review| ReviewAnswer {
                reviewer: review.reviewer.to_owned(),
                text: review.text.to_owned(),
                rating: stars.as_ref().map(|stars| match stars {
                    Ok((reply, color)) => reply
                        .ratings
                        .iter()
                        .find(|rating| rating.reviewer == review.reviewer)
                        .map_or_else(unavailable, |rating| RatingAnswer::Stars {
                            stars: rating.stars,
                            color: (*color).to_owned(),
                        }),
                    Err(_) => unavailable(),
                }),
            })
            .collect();
        json(
            StatusCode::OK,
            &ReviewsAnswer {
                id: book.id,
                version: self.version.label().to_owned(),
                reviews,
            },
        )
    }
}

fn unavailable() -> RatingAnswer {
    RatingAnswer::Unavailable {
        error: RATINGS_UNAVAILABLE.to_owned(),
    }
}
