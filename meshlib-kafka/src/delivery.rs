//! A record's delivery report, from librdkafka's callback to the send waiting for it.
//!
//! rdkafka's `FutureProducer` gives every record a `futures` oneshot channel and boxes its
//! sending half as the message's opaque: two allocations per record, made on the caller's thread
//! and freed on librdkafka's polling thread. The mesh's producer gives every record one shared
//! slot instead, written once by the delivery callback and read by the send, and a success
//! carries only its partition and offset. Slots are kept for later sends once read, by the thread
//! that read them: in a steady stream of records a send allocates none and takes no lock, where
//! an allocation made on one thread and freed on another is what costs most when librdkafka's
//! polling thread frees thousands of messages at once.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use rdkafka::error::KafkaError;
use rdkafka::message::{Message as _, OwnedMessage};
use rdkafka::producer::{DeliveryResult, ProducerContext};

use crate::cluster::MeshContext;

/// The outcome of one record: its partition and offset, or the error and the record as
/// librdkafka gives it back, for a retry.
pub(crate) type Report = Result<(i32, i64), (KafkaError, OwnedMessage)>;

/// One record's delivery report, shared by the callback that writes it and the send that waits.
#[derive(Default)]
pub(crate) struct Slot {
    report: OnceLock<Report>,
    waker: AtomicWaker,
}

impl Slot {
    fn complete(&self, report: Report) {
        // A report is written once per record: librdkafka calls back once per message.
        let _ = self.report.set(report);
        self.waker.wake();
    }
}

impl ProducerContext for MeshContext {
    type DeliveryOpaque = Arc<Slot>;

    fn delivery(&self, result: &DeliveryResult<'_>, slot: Arc<Slot>) {
        slot.complete(match result {
            Ok(message) => {
                // The cluster answered: what it reported before is no longer why sends fail.
                self.last_error.clear();
                Ok((message.partition(), message.offset()))
            }
            Err((error, message)) => Err((error.clone(), message.detach())),
        });
    }
}

/// A slot for a record about to be handed to librdkafka, and the wait for its report.
///
/// Slots are kept per thread once read: the thread that sends a stream of records is the one
/// that reads their reports, so it takes back its own slots without a lock, and any producer
/// can use any slot.
pub(crate) fn wait() -> (DeliveryReport, Arc<Slot>) {
    let kept = KEPT.with_borrow_mut(Vec::pop);
    let slot = kept.unwrap_or_default();
    let report = DeliveryReport {
        slot: Arc::clone(&slot),
    };
    (report, slot)
}

/// Slots kept per thread at most: a few hundred bytes each, and enough to cover the sends that
/// finish between two of a caller's polls at hundreds of thousands of records a second.
const KEPT_PER_THREAD: usize = 4096;

thread_local! {
    static KEPT: RefCell<Vec<Arc<Slot>>> = const { RefCell::new(Vec::new()) };
}

fn keep(slot: &mut Arc<Slot>) {
    // Only a slot the callback is done with; its report and waker go.
    let Some(fresh) = Arc::get_mut(slot) else {
        return;
    };
    *fresh = Slot::default();
    // A thread being torn down keeps nothing.
    let _ = KEPT.try_with(|kept| {
        let mut kept = kept.borrow_mut();
        if kept.len() < KEPT_PER_THREAD {
            kept.push(Arc::clone(slot));
        }
    });
}

/// Waits for the report in a [`Slot`]. Every message handed to librdkafka gets its report, a
/// purge when the producer is dropped included, and the mesh's sends borrow the producer, so a
/// wait always ends.
pub(crate) struct DeliveryReport {
    slot: Arc<Slot>,
}

impl DeliveryReport {
    /// The report, once written.
    pub(crate) fn poll_report(&self, cx: &Context<'_>) -> Poll<&Report> {
        let slot = &self.slot;
        if let Some(report) = slot.report.get() {
            return Poll::Ready(report);
        }
        slot.waker.register(cx.waker());
        match slot.report.get() {
            Some(report) => Poll::Ready(report),
            None => Poll::Pending,
        }
    }
}

impl Drop for DeliveryReport {
    fn drop(&mut self) {
        keep(&mut self.slot);
    }
}

impl Future for DeliveryReport {
    type Output = Result<(i32, i64), KafkaError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.poll_report(cx).map(|report| match report {
            Ok(delivered) => Ok(*delivered),
            Err((error, _)) => Err(error.clone()),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use super::*;

    fn kept() -> usize {
        KEPT.with_borrow(Vec::len)
    }

    #[test]
    fn a_slot_is_reused_only_once_the_callback_let_it_go_and_starts_over() {
        let cx = Context::from_waker(Waker::noop());

        // The send stops waiting while the callback still holds the slot: not kept.
        let (report, callback) = wait();
        drop(report);
        callback.complete(Ok((1, 7)));
        drop(callback);
        assert_eq!(kept(), 0);

        // The usual order: the report is written, the callback lets go, the send reads it.
        let (report, callback) = wait();
        assert!(report.poll_report(&cx).is_pending());
        callback.complete(Ok((2, 9)));
        drop(callback);
        assert!(matches!(report.poll_report(&cx), Poll::Ready(Ok((2, 9)))));
        drop(report);
        assert_eq!(kept(), 1);

        // The kept slot carries nothing of the last record.
        let (report, _callback) = wait();
        assert_eq!(kept(), 0);
        assert!(report.poll_report(&cx).is_pending());
    }
}
