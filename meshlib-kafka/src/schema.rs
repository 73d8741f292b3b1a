//! Event validation: each topic may name a JSON Schema that its records' values must satisfy.
//!
//! Schemas are compiled once, when the cluster is connected, and shared by its producers and
//! consumers. A record that is not JSON, or that breaks the schema, is refused with the topic and
//! the first violation (`/amount: -3 is less than the minimum of 0`): on produce it is never
//! sent, on consume it goes to the dead-letter topic without reaching the handler.

use std::collections::HashMap;
use std::sync::Arc;

use jsonschema::Validator;
use meshlib::config::KafkaConfig;

use crate::Error;

/// The compiled schema of each logical topic that has one.
#[derive(Clone, Default)]
pub(crate) struct Schemas {
    topics: HashMap<String, Arc<TopicSchema>>,
}

pub(crate) struct TopicSchema {
    validator: Validator,
    pub(crate) on_consume: bool,
}

impl Schemas {
    /// Reads and compiles the schemas `cluster` names; an unreadable or invalid schema is an
    /// error naming its key path and file.
    pub(crate) fn load(name: &str, cluster: &KafkaConfig) -> Result<Self, Error> {
        let mut topics = HashMap::new();
        for (topic, config) in &cluster.topics {
            let Some(path) = &config.schema else { continue };
            let at = format!("kafka.{name}.topics.{topic}.schema");
            let text = std::fs::read_to_string(path).map_err(|error| {
                Error::config(&at, format_args!("cannot read {}: {error}", path.display()))
            })?;
            let schema: serde_json::Value = serde_json::from_str(&text).map_err(|error| {
                Error::config(&at, format_args!("{} is not JSON: {error}", path.display()))
            })?;
            let validator = jsonschema::validator_for(&schema).map_err(|error| {
                Error::config(
                    &at,
                    format_args!("{} is not a valid JSON Schema: {error}", path.display()),
                )
            })?;
            topics.insert(
                topic.clone(),
                Arc::new(TopicSchema {
                    validator,
                    on_consume: config.validate_on_consume,
                }),
            );
        }
        Ok(Self { topics })
    }

    pub(crate) fn get(&self, topic: &str) -> Option<&Arc<TopicSchema>> {
        self.topics.get(topic)
    }
}

impl TopicSchema {
    /// Checks `value` (the record's bytes) against the schema.
    pub(crate) fn check(&self, topic: &str, value: &[u8]) -> Result<(), Error> {
        let instance: serde_json::Value = serde_json::from_slice(value).map_err(|error| {
            Error::invalid(topic, format_args!("the value is not JSON: {error}"))
        })?;
        match self.validator.validate(&instance) {
            Ok(()) => Ok(()),
            Err(error) => {
                let path = error.instance_path().to_string();
                let path = if path.is_empty() { "/" } else { &path };
                Err(Error::invalid(topic, format_args!("{path}: {error}")))
            }
        }
    }
}
