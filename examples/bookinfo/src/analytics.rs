//! analytics: consumes the `rating-viewed` events ratings publishes, counts them per book, and
//! answers over HTTP (through the ingress):
//!
//! | path | what |
//! | --- | --- |
//! | `/analytics/views` | events counted, in all and per book ([`Views`]) |
//! | `/analytics/traces/{trace id}` | the event of that trace, if one of the last 1024 events was in it |
//!
//! Each event is handled under the consumer's `process` span, which continues the trace whose
//! context ratings put in the record's headers: the trace a page view started reaches here.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use http::{Method, Request, StatusCode};
use meshlib::Body;
use meshlib_kafka::{HandlerError, Record};

use crate::ratings::RatingViewed;
use crate::web::{Answer, current_trace_id, json, text};

/// How many recent events are kept with their trace ids.
const RECENT: usize = 1024;

/// The counts, shared by the consumer and the HTTP handler.
#[derive(Clone, Debug, Default)]
pub struct Analytics {
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    views: Views,
    /// The last events, newest last, with the trace each was part of.
    recent: VecDeque<(String, RatingViewed)>,
}

/// `GET /analytics/views`.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Views {
    /// Events counted.
    pub events: u64,
    /// Events per product id.
    pub per_book: BTreeMap<u32, u64>,
}

impl Analytics {
    /// Counts one event: the consumer's handler.
    pub fn record(&self, record: &Record) -> Result<(), HandlerError> {
        let event: RatingViewed = record.value_json().map_err(HandlerError::reject)?;
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.views.events += 1;
        *state.views.per_book.entry(event.product_id).or_default() += 1;
        if let Some(trace_id) = current_trace_id() {
            if state.recent.len() == RECENT {
                state.recent.pop_front();
            }
            state.recent.push_back((trace_id, event));
        }
        Ok(())
    }

    /// The counts so far.
    pub fn views(&self) -> Views {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.views.clone()
    }

    /// Answers one request.
    pub async fn handle(self, request: Request<Body>) -> Answer {
        if request.method() != Method::GET {
            return text(StatusCode::METHOD_NOT_ALLOWED, "GET only");
        }
        let path = request.uri().path();
        if path == "/analytics/views" {
            return json(StatusCode::OK, &self.views());
        }
        let Some(trace_id) = path.strip_prefix("/analytics/traces/") else {
            return text(StatusCode::NOT_FOUND, "try /analytics/views");
        };
        match self.event_in_trace(trace_id) {
            Some(event) => json(StatusCode::OK, &event),
            None => text(StatusCode::NOT_FOUND, "no recent event in that trace"),
        }
    }

    /// The event counted in trace `trace_id` (32 hex digits), if it is one of the last 1024.
    pub fn event_in_trace(&self, trace_id: &str) -> Option<RatingViewed> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state
            .recent
            .iter()
            .rev()
            .find(|(id, _)| id == trace_id)
            .map(|(_, event)| event.clone())
    }
}
