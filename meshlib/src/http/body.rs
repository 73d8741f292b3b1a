use std::any::Any;
use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Empty, Full};

use hyper::body::Incoming;

use crate::Error;
use crate::balance::BalancedEndpoint;
use crate::classify::{Class, EndOfStream};
use crate::error::BoxError;
use crate::http::ServedBy;
use crate::http::transport::Lent;

/// The body of requests and responses that pass through the mesh.
///
/// Empty and in-memory bodies and hyper's own response bodies are carried without a heap
/// allocation; any other [`http_body::Body`] is boxed. A response's body also says which endpoint
/// answered ([`Body::served_by`]).
pub struct Body {
    kind: Kind,
    /// On a response from an endpoint: the endpoint, and the answer's class if it was decided
    /// at the head. Carried here rather than as a response extension, whose map would cost the
    /// response three allocations.
    served: Option<(Arc<BalancedEndpoint>, Option<Class>)>,
}

enum Kind {
    Empty,
    Full(Option<Bytes>),
    /// Data in memory whose sender did not declare its length: a streaming body read whole so
    /// that it can be sent again, which does not declare it either (see [`Replayable`]).
    Unsized(Option<Bytes>),
    Incoming(Incoming),
    /// A response over an HTTP/1.1 connection, lent to it until its end.
    Lent(Incoming, Option<Lent>),
    Boxed(UnsyncBoxBody<Bytes, BoxError>),
    /// Frames already read (while trying to buffer the body for retries), then the rest.
    Prefixed(Box<(VecDeque<Frame<Bytes>>, Body)>),
    /// A response whose class is decided at its end (gRPC's trailers): the body, and the
    /// classification waiting for it until then.
    Classified(Box<(Body, Option<EndOfStream>)>),
}

impl Body {
    const fn of(kind: Kind) -> Self {
        Self { kind, served: None }
    }

    /// The endpoint that answered, on a response the mesh received (an [`HttpClient`]'s
    /// response, or a gRPC channel's), and how the answer was classified.
    ///
    /// [`HttpClient`]: crate::HttpClient
    pub fn served_by(&self) -> Option<ServedBy> {
        self.served.as_ref().map(|(endpoint, class)| ServedBy {
            endpoint: endpoint.endpoint().addr(),
            class: *class,
        })
    }

    /// Marks this response body as `endpoint`'s answer, classified as `class` if the head decided.
    pub(crate) fn set_served_by(&mut self, endpoint: &Arc<BalancedEndpoint>, class: Option<Class>) {
        self.served = Some((Arc::clone(endpoint), class));
    }

    /// A body with no data.
    pub fn empty() -> Self {
        Self::of(Kind::Empty)
    }

    /// A body of `data` that does not declare its length (no `content-length`; chunked over
    /// HTTP/1.1), as a streaming body would not: how tonic frames a gRPC request, which the
    /// mesh's gRPC channel reads into memory and sends on framed the same way.
    pub fn without_length(data: Bytes) -> Self {
        Self::of(Kind::Unsized(Some(data)))
    }

    /// Wraps any body. Bodies that are already a [`Body`], an [`Empty`], a [`Full`] or a hyper
    /// [`Incoming`] are taken over as they are.
    pub fn new<B>(body: B) -> Self
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let body = match try_downcast::<Body, B>(body) {
            Ok(body) => return body,
            Err(body) => body,
        };
        let body = match try_downcast::<Incoming, B>(body) {
            Ok(incoming) => {
                return Self::of(Kind::Incoming(incoming));
            }
            Err(body) => body,
        };
        let body = match try_downcast::<Full<Bytes>, B>(body) {
            Ok(full) => return Self::full(full),
            Err(body) => body,
        };
        let Err(body) = try_downcast::<Empty<Bytes>, B>(body) else {
            return Self::empty();
        };
        Self::of(Kind::Boxed(body.map_err(Into::into).boxed_unsync()))
    }

    fn full(full: Full<Bytes>) -> Self {
        let hint = full.size_hint();
        if hint.exact() == Some(0) {
            return Self::empty();
        }
        // A `Full` yields its one frame and nothing else; take it out synchronously.
        let mut full = full;
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        match Pin::new(&mut full).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => Self::from(frame.into_data().unwrap_or_default()),
            _ => Self::empty(),
        }
    }
}

impl Body {
    /// A response's body that gives `lent` back when it ends.
    pub(crate) fn lent(body: Incoming, lent: Lent) -> Self {
        if body.is_end_stream() {
            lent.ended();
            return Self::from(body);
        }
        Self::of(Kind::Lent(body, Some(lent)))
    }

    /// This body, classified by `end` when its trailers pass, when it ends without them, or
    /// when it fails.
    pub(crate) fn classified(self, end: EndOfStream) -> Self {
        Self::of(Kind::Classified(Box::new((self, Some(end)))))
    }

    /// Ends the span of `cx` when this body ends, with the gRPC status of its trailers, if its
    /// status is still to come; else hands `cx` back.
    pub(crate) fn end_span_at_status(
        &mut self,
        cx: opentelemetry::Context,
    ) -> Option<opentelemetry::Context> {
        match &mut self.kind {
            Kind::Classified(classified) => match &mut classified.1 {
                Some(end) => {
                    end.end_span(cx);
                    None
                }
                None => Some(cx),
            },
            _ => Some(cx),
        }
    }

    /// A copy of a body held in memory; `None` for one that streams.
    pub(crate) fn try_clone(&self) -> Option<Body> {
        match &self.kind {
            Kind::Empty => Some(Self::empty()),
            Kind::Full(data) => Some(Self::of(Kind::Full(data.clone()))),
            Kind::Unsized(data) => Some(Self::of(Kind::Unsized(data.clone()))),
            _ => None,
        }
    }

    /// Reads the whole body into memory if it is at most `limit` bytes and has no trailers, so
    /// that it can be sent again. Otherwise gives back a body that yields exactly what this one
    /// would have.
    ///
    /// With `wait` false, only what the body has ready now is read: a body that would make the
    /// caller wait is given back as streaming. A gRPC streaming request may hold its next
    /// message until it has read a response, and waiting for its end would never end.
    pub(crate) async fn into_replayable(
        self,
        limit: usize,
        wait: bool,
    ) -> Result<Replayable, Body> {
        let mut body = match self.kind {
            Kind::Empty => return Replayable::in_memory(None, true, limit),
            Kind::Full(data) => return Replayable::in_memory(data, true, limit),
            Kind::Unsized(data) => return Replayable::in_memory(data, false, limit),
            kind => Self::of(kind),
        };
        let hint = body.size_hint();
        let sized = hint.exact().is_some();
        if hint.lower() > limit as u64 {
            return Err(body);
        }
        let mut frames = VecDeque::new();
        let mut length = 0;
        loop {
            let next = if wait {
                body.frame().await
            } else {
                match futures_util::FutureExt::now_or_never(body.frame()) {
                    Some(next) => next,
                    None => {
                        return Err(Self::of(Kind::Prefixed(Box::new((frames, body)))));
                    }
                }
            };
            match next {
                None => break,
                Some(Ok(frame)) => {
                    let over = match frame.data_ref() {
                        Some(data) => {
                            length += data.len();
                            length > limit
                        }
                        None => true,
                    };
                    frames.push_back(frame);
                    if over {
                        return Err(Self::of(Kind::Prefixed(Box::new((frames, body)))));
                    }
                }
                Some(Err(error)) => {
                    // Replaying the failure is what the caller would have seen.
                    let failed = http_body_util::StreamBody::new(futures_util::stream::iter(
                        frames.into_iter().map(Ok).chain([Err(error)]),
                    ));
                    return Err(Self::new(failed));
                }
            }
        }
        // One frame, as a unary gRPC request's message: its bytes as they are, without a copy.
        let data = if frames.len() == 1 {
            frames
                .pop_front()
                .and_then(|frame| frame.into_data().ok())
                .unwrap_or_default()
        } else {
            let mut data = bytes::BytesMut::with_capacity(length);
            for frame in frames {
                if let Ok(chunk) = frame.into_data() {
                    data.extend_from_slice(&chunk);
                }
            }
            data.freeze()
        };
        Ok(Replayable { data, sized })
    }
}

/// A body read into memory by [`Body::into_replayable`], to be sent as many times as needed.
///
/// Each copy declares the body's length only if the original did: buffering a request for
/// retries does not change how it is framed. A streaming body still goes out without a
/// `content-length` (chunked over HTTP/1.1), and a gRPC call without one, as tonic's own channel
/// sends it.
#[derive(Clone, Debug)]
pub(crate) struct Replayable {
    data: Bytes,
    sized: bool,
}

impl Replayable {
    /// `data`, already in memory, if it is at most `limit` bytes; else a body of it, as it was.
    fn in_memory(data: Option<Bytes>, sized: bool, limit: usize) -> Result<Self, Body> {
        let replayable = Self {
            data: data.unwrap_or_default(),
            sized,
        };
        if replayable.data.len() <= limit {
            Ok(replayable)
        } else {
            Err(replayable.body())
        }
    }

    /// A copy of the body, to send.
    pub(crate) fn body(&self) -> Body {
        if self.sized {
            Body::from(self.data.clone())
        } else {
            Body::without_length(self.data.clone())
        }
    }
}

fn try_downcast<T: 'static, K: 'static>(k: K) -> Result<T, K> {
    let mut k = Some(k);
    match <dyn Any>::downcast_mut::<Option<T>>(&mut k) {
        Some(t) => Ok(t.take().expect("just put there")),
        None => Err(k.expect("just put there")),
    }
}

impl Default for Body {
    fn default() -> Self {
        Self::empty()
    }
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Empty => "empty",
            Kind::Full(_) => "full",
            Kind::Unsized(_) => "unsized",
            Kind::Incoming(_) | Kind::Lent(..) => "incoming",
            Kind::Boxed(_) => "boxed",
            Kind::Prefixed(_) => "prefixed",
            Kind::Classified(_) => "classified",
        };
        f.debug_tuple("Body").field(&kind).finish()
    }
}

impl From<Bytes> for Body {
    fn from(bytes: Bytes) -> Self {
        if bytes.is_empty() {
            Self::empty()
        } else {
            Self::of(Kind::Full(Some(bytes)))
        }
    }
}

impl From<String> for Body {
    fn from(text: String) -> Self {
        Bytes::from(text).into()
    }
}

impl From<&'static str> for Body {
    fn from(text: &'static str) -> Self {
        Bytes::from_static(text.as_bytes()).into()
    }
}

impl From<Vec<u8>> for Body {
    fn from(data: Vec<u8>) -> Self {
        Bytes::from(data).into()
    }
}

impl From<Incoming> for Body {
    fn from(incoming: Incoming) -> Self {
        Self::of(Kind::Incoming(incoming))
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        match &mut self.kind {
            Kind::Empty => Poll::Ready(None),
            Kind::Full(data) | Kind::Unsized(data) => {
                Poll::Ready(data.take().map(|data| Ok(Frame::data(data))))
            }
            Kind::Incoming(incoming) => Pin::new(incoming).poll_frame(cx).map_err(Error::body),
            Kind::Lent(incoming, lent) => {
                let polled = Pin::new(&mut *incoming).poll_frame(cx);
                let ended = match &polled {
                    Poll::Ready(None) => true,
                    Poll::Ready(Some(Ok(_))) => incoming.is_end_stream(),
                    Poll::Ready(Some(Err(_))) | Poll::Pending => false,
                };
                if ended && let Some(lent) = lent.take() {
                    lent.ended();
                }
                polled.map_err(Error::body)
            }
            Kind::Boxed(boxed) => Pin::new(boxed).poll_frame(cx).map_err(Error::body),
            Kind::Prefixed(prefixed) => {
                let (frames, rest) = &mut **prefixed;
                match frames.pop_front() {
                    Some(frame) => Poll::Ready(Some(Ok(frame))),
                    None => Pin::new(rest).poll_frame(cx),
                }
            }
            Kind::Classified(classified) => {
                let (body, end) = &mut **classified;
                let polled = Pin::new(body).poll_frame(cx);
                match &polled {
                    Poll::Pending => {}
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(trailers) = frame.trailers_ref()
                            && let Some(end) = end.take()
                        {
                            end.end(Some(trailers));
                        }
                    }
                    Poll::Ready(None) => {
                        if let Some(end) = end.take() {
                            end.end(None);
                        }
                    }
                    Poll::Ready(Some(Err(_))) => {
                        if let Some(end) = end.take() {
                            end.failed();
                        }
                    }
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Empty => true,
            Kind::Full(data) | Kind::Unsized(data) => data.is_none(),
            Kind::Incoming(incoming) | Kind::Lent(incoming, _) => incoming.is_end_stream(),
            Kind::Boxed(boxed) => boxed.is_end_stream(),
            Kind::Prefixed(prefixed) => prefixed.0.is_empty() && prefixed.1.is_end_stream(),
            // Not ended until the classification has seen the end.
            Kind::Classified(classified) => classified.1.is_none() && classified.0.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Kind::Unsized(data) => {
                let mut hint = SizeHint::new();
                hint.set_lower(data.as_ref().map_or(0, |d| d.len() as u64));
                hint
            }
            Kind::Incoming(incoming) | Kind::Lent(incoming, _) => incoming.size_hint(),
            Kind::Boxed(boxed) => boxed.size_hint(),
            Kind::Prefixed(_) => SizeHint::default(),
            Kind::Classified(classified) => classified.0.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn collect(body: Body) -> Bytes {
        body.collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn known_bodies_are_taken_over_without_boxing() {
        let full = Body::new(Full::new(Bytes::from_static(b"hello")));
        assert!(matches!(full.kind, Kind::Full(_)));
        assert_eq!(full.size_hint().exact(), Some(5));
        assert_eq!(collect(full).await, "hello");

        assert!(matches!(Body::new(Empty::<Bytes>::new()).kind, Kind::Empty));
        assert!(matches!(Body::new(Body::from("x")).kind, Kind::Full(_)));
    }

    fn chunks(chunks: &[&'static str]) -> Body {
        Body::new(http_body_util::StreamBody::new(futures_util::stream::iter(
            chunks
                .iter()
                .map(|chunk| {
                    Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(chunk.as_bytes())))
                })
                .collect::<Vec<_>>(),
        )))
    }

    #[tokio::test]
    async fn small_bodies_are_buffered_for_replay() {
        let full = Body::from("abc").into_replayable(3, true).await.unwrap();
        assert_eq!(full.data, "abc");
        let streamed = chunks(&["ab", "cd"])
            .into_replayable(4, true)
            .await
            .unwrap();
        assert_eq!(streamed.data, "abcd");
        let empty = Body::empty().into_replayable(0, true).await.unwrap();
        assert_eq!(empty.data, "");
        // Each copy yields the whole body again.
        for _ in 0..2 {
            assert_eq!(collect(full.body()).await, "abc");
            assert_eq!(collect(streamed.body()).await, "abcd");
        }
    }

    #[tokio::test]
    async fn copies_declare_a_length_only_if_the_original_did() {
        let full = Body::from("abc").into_replayable(3, true).await.unwrap();
        assert_eq!(full.body().size_hint().exact(), Some(3));
        let empty = Body::empty().into_replayable(0, true).await.unwrap();
        assert_eq!(empty.body().size_hint().exact(), Some(0));
        // One frame or several, a body that streamed is copied without a length to declare.
        for parts in [&["abcd"][..], &["ab", "cd"]] {
            let streamed = chunks(parts).into_replayable(4, true).await.unwrap();
            let copy = streamed.body();
            assert_eq!(copy.size_hint().exact(), None, "{parts:?}");
            assert_eq!(copy.size_hint().lower(), 4);
            // And so is a copy of a copy, which a hedge makes.
            let again = copy.into_replayable(4, true).await.unwrap().body();
            assert_eq!(again.size_hint().exact(), None, "{parts:?}");
            assert_eq!(collect(again).await, "abcd");
        }
    }

    #[tokio::test]
    async fn large_bodies_are_given_back_whole() {
        let body = Body::from("abcdef")
            .into_replayable(5, true)
            .await
            .unwrap_err();
        assert_eq!(collect(body).await, "abcdef");
        let body = chunks(&["ab", "cd", "ef"])
            .into_replayable(3, true)
            .await
            .unwrap_err();
        assert!(matches!(body.kind, Kind::Prefixed(_)));
        assert_eq!(collect(body).await, "abcdef");
    }

    #[tokio::test]
    async fn bodies_not_ready_are_not_waited_for_when_asked() {
        let (sender, receiver) =
            tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(2);
        sender
            .send(Ok(Frame::data(Bytes::from_static(b"ab"))))
            .await
            .unwrap();
        let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|item| (item, receiver))
        });
        let body = Body::new(http_body_util::StreamBody::new(stream));
        // The first frame is there, the second is not yet: given back, nothing lost.
        let body = body.into_replayable(10, false).await.unwrap_err();
        sender
            .send(Ok(Frame::data(Bytes::from_static(b"cd"))))
            .await
            .unwrap();
        drop(sender);
        assert_eq!(collect(body).await, "abcd");
        // Ready at once: buffered as with waiting.
        let ready = chunks(&["ab", "cd"])
            .into_replayable(4, false)
            .await
            .unwrap();
        assert_eq!(ready.data, "abcd");
    }

    #[tokio::test]
    async fn other_bodies_are_boxed_and_stream() {
        let stream = http_body_util::StreamBody::new(futures_util::stream::iter([
            Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(b"a"))),
            Ok(Frame::data(Bytes::from_static(b"b"))),
        ]));
        let body = Body::new(stream);
        assert!(matches!(body.kind, Kind::Boxed(_)));
        assert_eq!(collect(body).await, "ab");
    }
}
