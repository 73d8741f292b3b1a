//! Records as the application sees them, sent and received.

use std::fmt;

use bytes::Bytes;
use opentelemetry::propagation::Extractor;
use rdkafka::message::{BorrowedMessage, Header, Headers as _, Message as _, OwnedHeaders};

/// One Kafka record: a logical topic, an optional key, a value and headers; for a received
/// record also where it was read from.
///
/// Cheap to clone: key, value and header values are reference-counted bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Record {
    pub(crate) topic: String,
    pub(crate) key: Option<Bytes>,
    pub(crate) value: Bytes,
    pub(crate) headers: Vec<(String, Bytes)>,
    pub(crate) partition: Option<i32>,
    pub(crate) offset: Option<i64>,
    pub(crate) timestamp: Option<i64>,
    /// The topic the record was read from, when a route made it differ from `topic`.
    pub(crate) physical: Option<String>,
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Record")
            .field("topic", &self.topic)
            .field("key", &self.key)
            .field("value_len", &self.value.len())
            .field("headers", &self.headers.len())
            .field("partition", &self.partition)
            .field("offset", &self.offset)
            .finish()
    }
}

impl Record {
    /// A record for the logical topic `topic` with `value`.
    pub fn new(topic: impl Into<String>, value: impl Into<Bytes>) -> Self {
        Self {
            topic: topic.into(),
            key: None,
            value: value.into(),
            headers: Vec::new(),
            partition: None,
            offset: None,
            timestamp: None,
            physical: None,
        }
    }

    /// A record whose value is `value` as JSON.
    pub fn json<T: serde::Serialize + ?Sized>(
        topic: impl Into<String>,
        value: &T,
    ) -> Result<Self, serde_json::Error> {
        Ok(Self::new(topic, serde_json::to_vec(value)?))
    }

    /// Sets the key, which picks the partition: records with one key keep their order.
    #[must_use]
    pub fn key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Adds a header.
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sends to this partition instead of the one the key hashes to.
    #[must_use]
    pub fn partition(mut self, partition: i32) -> Self {
        self.partition = Some(partition);
        self
    }

    /// The logical topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The topic the record was read from: the logical one unless a route led elsewhere.
    pub fn physical_topic(&self) -> &str {
        self.physical.as_deref().unwrap_or(&self.topic)
    }

    /// The key.
    pub fn key_bytes(&self) -> Option<&Bytes> {
        self.key.as_ref()
    }

    /// The key as UTF-8, if it is.
    pub fn key_str(&self) -> Option<&str> {
        std::str::from_utf8(self.key.as_ref()?).ok()
    }

    /// The value.
    pub fn value(&self) -> &Bytes {
        &self.value
    }

    /// The value parsed as JSON.
    pub fn value_json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.value)
    }

    /// The headers, in order.
    pub fn headers(&self) -> &[(String, Bytes)] {
        &self.headers
    }

    /// The first header called `name`.
    pub fn header_value(&self, name: &str) -> Option<&Bytes> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// The partition: where it was read from, or where it is to be sent if one was chosen.
    pub fn partition_id(&self) -> Option<i32> {
        self.partition
    }

    /// The offset a received record was read at.
    pub fn offset(&self) -> Option<i64> {
        self.offset
    }

    /// The record's timestamp in milliseconds since the epoch, for a received record.
    pub fn timestamp_millis(&self) -> Option<i64> {
        self.timestamp
    }

    /// Bytes the record takes: key, value and headers, what the in-flight bound and the byte rate
    /// limit count.
    pub(crate) fn size(&self) -> usize {
        self.key.as_ref().map_or(0, Bytes::len)
            + self.value.len()
            + self
                .headers
                .iter()
                .map(|(n, v)| n.len() + v.len())
                .sum::<usize>()
    }

    /// A received record, detached from librdkafka's buffers.
    pub(crate) fn from_message(message: &BorrowedMessage<'_>, logical: &str) -> Self {
        let headers = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|header| {
                        (
                            header.key.to_owned(),
                            header.value.map(Bytes::copy_from_slice).unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let physical = message.topic();
        Self {
            topic: logical.to_owned(),
            key: message.key().map(Bytes::copy_from_slice),
            value: message
                .payload()
                .map(Bytes::copy_from_slice)
                .unwrap_or_default(),
            headers,
            partition: Some(message.partition()),
            offset: Some(message.offset()),
            timestamp: message.timestamp().to_millis(),
            physical: (physical != logical).then(|| physical.to_owned()),
        }
    }

    /// librdkafka's headers for this record, plus `extra` ones.
    pub(crate) fn kafka_headers(&self, extra: Option<(&str, &[u8])>) -> Option<OwnedHeaders> {
        if self.headers.is_empty() && extra.is_none() {
            return None;
        }
        let mut headers =
            OwnedHeaders::new_with_capacity(self.headers.len() + usize::from(extra.is_some()));
        for (name, value) in &self.headers {
            headers = headers.insert(Header {
                key: name,
                value: Some(&value[..]),
            });
        }
        if let Some((name, value)) = extra {
            headers = headers.insert(Header {
                key: name,
                value: Some(value),
            });
        }
        Some(headers)
    }
}

/// Read-only view of a record's headers for propagators.
pub(crate) struct HeaderView<'a>(pub(crate) &'a [(String, Bytes)]);

impl Extractor for HeaderView<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        let (_, value) = self
            .0
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(key))?;
        std::str::from_utf8(value).ok()
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name.as_str()).collect()
    }
}

/// Where a record was written.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Delivery {
    /// The physical topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The record's offset in the partition.
    pub offset: i64,
}
