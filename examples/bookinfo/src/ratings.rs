//! ratings: the stars each reviewer gave a book, served over gRPC as `bookinfo.Ratings`, and a
//! `rating-viewed` event published to Kafka for every lookup.
//!
//! The messages are written with prost's derive and the client and server with tonic's
//! codegen-free API (what tonic-build would generate from the `.proto` below), so building needs
//! no `protoc`:
//!
//! ```proto
//! package bookinfo;
//! service Ratings { rpc GetRatings(RatingsRequest) returns (RatingsReply); }
//! message RatingsRequest { uint32 product_id = 1; }
//! message RatingsReply { uint32 product_id = 1; repeated Rating ratings = 2; }
//! message Rating { string reviewer = 1; uint32 stars = 2; }
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::uri::PathAndQuery;
use meshlib_grpc::GrpcChannel;
use meshlib_kafka::{Producer, Record};
use opentelemetry::context::FutureExt as _;
use tonic::metadata::MetadataValue;
use tonic::server::NamedService;
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;

use crate::catalogue;
use crate::web::END_USER;

/// The topic ratings publishes a [`RatingViewed`] to per lookup.
pub const TOPIC: &str = "rating-viewed";

/// The service's full name.
pub const SERVICE: &str = "bookinfo.Ratings";

const GET_RATINGS: &str = "/bookinfo.Ratings/GetRatings";

/// `bookinfo.RatingsRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RatingsRequest {
    /// The book.
    #[prost(uint32, tag = "1")]
    pub product_id: u32,
}

/// `bookinfo.RatingsReply`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RatingsReply {
    /// The book.
    #[prost(uint32, tag = "1")]
    pub product_id: u32,
    /// One per reviewer.
    #[prost(message, repeated, tag = "2")]
    pub ratings: Vec<Rating>,
}

/// `bookinfo.Rating`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Rating {
    /// Who rated.
    #[prost(string, tag = "1")]
    pub reviewer: String,
    /// 1 to 5.
    #[prost(uint32, tag = "2")]
    pub stars: u32,
}

/// The `rating-viewed` event: somebody's page showed a book's ratings.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RatingViewed {
    /// The book.
    pub product_id: u32,
    /// The signed-in user who viewed them, if any.
    pub user: Option<String>,
}

/// Asks ratings for a book's ratings through `channel`, passing on the signed-in user.
pub async fn get_ratings(
    channel: GrpcChannel,
    product_id: u32,
    user: Option<&str>,
) -> Result<RatingsReply, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    let mut request = Request::new(RatingsRequest { product_id });
    if let Some(user) = user.and_then(|user| MetadataValue::try_from(user).ok()) {
        request.metadata_mut().insert(END_USER, user);
    }
    request
        .extensions_mut()
        .insert(tonic::GrpcMethod::new(SERVICE, "GetRatings"));
    grpc.ready()
        .await
        .map_err(|error| Status::unavailable(error.to_string()))?;
    let reply = grpc
        .unary(
            request,
            PathAndQuery::from_static(GET_RATINGS),
            ProstCodec::<RatingsRequest, RatingsReply>::default(),
        )
        .await?;
    Ok(reply.into_inner())
}

/// The server side of `bookinfo.Ratings`, as tonic-build would generate it.
#[derive(Clone, Debug)]
pub struct RatingsServer {
    events: Producer,
}

impl RatingsServer {
    /// A server that publishes its `rating-viewed` events with `events`.
    pub fn new(events: Producer) -> Self {
        Self { events }
    }
}

impl NamedService for RatingsServer {
    const NAME: &'static str = SERVICE;
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<B> tower_service::Service<http::Request<B>> for RatingsServer
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != GET_RATINGS {
            return Box::pin(async { Ok(Status::unimplemented("no such method").into_http()) });
        }
        let events = self.events.clone();
        Box::pin(async move {
            let lookup = tower::service_fn(move |request: Request<RatingsRequest>| {
                let events = events.clone();
                async move { lookup(&events, &request) }
            });
            let mut grpc =
                tonic::server::Grpc::new(ProstCodec::<RatingsReply, RatingsRequest>::default());
            Ok(grpc.unary(lookup, request).await)
        })
    }
}

/// Answers one lookup and publishes its event.
fn lookup(
    events: &Producer,
    request: &Request<RatingsRequest>,
) -> Result<Response<RatingsReply>, Status> {
    let product_id = request.get_ref().product_id;
    let book = catalogue::book(product_id)
        .ok_or_else(|| Status::not_found(format!("no book {product_id}")))?;
    let user = request
        .metadata()
        .get(END_USER)
        .and_then(|user| user.to_str().ok())
        .map(str::to_owned);
    publish(events, &RatingViewed { product_id, user });
    Ok(Response::new(RatingsReply {
        product_id,
        ratings: book
            .reviews
            .iter()
            .map(|review| Rating {
                reviewer: review.reviewer.to_owned(),
                stars: review.stars,
            })
            .collect(),
    }))
}

/// Publishes `event` without holding up the answer: the page does not wait for Kafka, and a
/// Kafka outage costs analytics its counts, not readers their ratings. The send continues the
/// lookup's trace (its `traceparent` goes in the record's headers).
fn publish(events: &Producer, event: &RatingViewed) {
    let record = match Record::json(TOPIC, event) {
        Ok(record) => record.key(event.product_id.to_string()),
        Err(error) => {
            tracing::warn!(%error, "cannot encode a rating-viewed event");
            return;
        }
    };
    let events = events.clone();
    let send = async move {
        if let Err(error) = events.send(record).await {
            tracing::warn!(%error, "rating-viewed event not published");
        }
    };
    tokio::spawn(send.with_current_context());
}
