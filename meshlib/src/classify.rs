//! The response classifier: one decision per response, consumed by everything that reacts to
//! failure (the balancer's load estimate now; retries, breakers, outlier detection and metrics as
//! they are added), so that they can never disagree about what failed.

use http::{Response, StatusCode};

use crate::Error;

/// What a response (or the lack of one) says about the request and the endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Class {
    /// The endpoint did its job. Client errors (4xx) are successes from the mesh's point of view:
    /// the endpoint answered correctly that the request was wrong.
    Success,
    /// The request failed in a way that another attempt may fix: the connection could not be
    /// made, or the endpoint said it was unavailable (502, 503, 504 by default).
    RetryableFailure,
    /// The request failed and trying again is not known to be safe or useful (500, a connection
    /// lost after the request was sent).
    Failure,
}

impl Class {
    /// `true` for [`Class::Success`].
    pub fn is_success(self) -> bool {
        self == Self::Success
    }

    /// `true` when another attempt may succeed.
    pub fn is_retryable(self) -> bool {
        self == Self::RetryableFailure
    }
}

/// Classifies HTTP responses and errors.
#[derive(Clone, Debug)]
pub struct Classifier {
    /// Bit `n` set: status `100 + n` is a retryable failure.
    retryable: [u64; 15],
}

impl Default for Classifier {
    /// 502, 503 and 504 are retryable, as Envoy's `retry_on: 5xx-gateway` and Linkerd.
    fn default() -> Self {
        Self::with_retryable_statuses([
            StatusCode::BAD_GATEWAY,
            StatusCode::SERVICE_UNAVAILABLE,
            StatusCode::GATEWAY_TIMEOUT,
        ])
    }
}

impl Classifier {
    /// A classifier for which exactly `statuses` are retryable failures; other 5xx statuses are
    /// failures and everything else is a success.
    pub fn with_retryable_statuses(statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        let mut retryable = [0u64; 15];
        for status in statuses {
            let bit = usize::from(status.as_u16() - 100);
            retryable[bit / 64] |= 1 << (bit % 64);
        }
        Self { retryable }
    }

    /// Classifies a response by its status.
    pub fn status(&self, status: StatusCode) -> Class {
        let bit = usize::from(status.as_u16() - 100);
        if self.retryable[bit / 64] & (1 << (bit % 64)) != 0 {
            Class::RetryableFailure
        } else if status.is_server_error() {
            Class::Failure
        } else {
            Class::Success
        }
    }

    /// Classifies a response.
    pub fn response<B>(&self, response: &Response<B>) -> Class {
        self.status(response.status())
    }

    /// Classifies a request that got no response. Failures to connect and per-try timeouts are
    /// retryable (whether the request may be sent twice is the retry layer's decision); other
    /// errors, such as a connection lost mid-response, are failures.
    pub fn error(&self, error: &Error) -> Class {
        if error.is_connect() || error.is_timeout() {
            Class::RetryableFailure
        } else {
            Class::Failure
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified_once_for_everyone() {
        let classifier = Classifier::default();
        assert_eq!(classifier.status(StatusCode::OK), Class::Success);
        assert_eq!(classifier.status(StatusCode::NOT_FOUND), Class::Success);
        assert_eq!(
            classifier.status(StatusCode::INTERNAL_SERVER_ERROR),
            Class::Failure
        );
        for status in [502, 503, 504] {
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(
                classifier.status(status),
                Class::RetryableFailure,
                "{status}"
            );
        }
    }

    #[test]
    fn retryable_statuses_are_configurable() {
        let classifier = Classifier::with_retryable_statuses([StatusCode::TOO_MANY_REQUESTS]);
        assert_eq!(
            classifier.status(StatusCode::TOO_MANY_REQUESTS),
            Class::RetryableFailure
        );
        assert_eq!(
            classifier.status(StatusCode::SERVICE_UNAVAILABLE),
            Class::Failure
        );
        let highest = StatusCode::from_u16(999).unwrap();
        assert_eq!(
            Classifier::with_retryable_statuses([highest]).status(highest),
            Class::RetryableFailure
        );
    }
}
