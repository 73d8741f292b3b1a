//! Topic routing for releases: a logical topic maps to a physical one by the process's labels or
//! by a weighted split, so a canary or a blue/green switch works for events as it does for HTTP.
//!
//! A split is drawn once per producer, not per record: a producer's records for a topic stay on
//! one physical topic, so their per-partition order is kept, and "10% of producers" is what a
//! canary of 10% of the replicas looks like. Consumers follow only routes that name a `topic` by
//! label: a `version = "v2"` consumer reads what v2 producers write, and the stable consumers keep
//! reading the logical topic.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use meshlib::config::KafkaTopicConfig;

/// The physical topic of each logical topic for one producer or consumer, decided once.
#[derive(Clone, Debug, Default)]
pub(crate) struct TopicRoutes {
    routes: HashMap<String, Arc<str>>,
}

impl TopicRoutes {
    /// Routes for a producer with `labels`, drawing splits with `draw(total)` (a number below
    /// `total`).
    pub(crate) fn for_producer(
        topics: &BTreeMap<String, KafkaTopicConfig>,
        labels: &BTreeMap<String, String>,
        mut draw: impl FnMut(u64) -> u64,
    ) -> Self {
        let mut routes = HashMap::new();
        for (logical, config) in topics {
            let Some(route) = config.routes.iter().find(|r| matches(&r.labels, labels)) else {
                continue;
            };
            let physical = match &route.topic {
                Some(topic) => topic.clone(),
                None => {
                    let total: u64 = route.split.iter().map(|s| u64::from(s.weight)).sum();
                    let mut point = draw(total);
                    let chosen = route.split.iter().find(|split| {
                        let weight = u64::from(split.weight);
                        if point < weight {
                            true
                        } else {
                            point -= weight;
                            false
                        }
                    });
                    // Validation refuses splits whose weights are all 0, so one is chosen.
                    chosen.map_or_else(|| logical.clone(), |split| split.topic.clone())
                }
            };
            if physical != *logical {
                routes.insert(logical.clone(), physical.into());
            }
        }
        Self { routes }
    }

    /// Routes for a consumer with `labels`: only label routes that name a topic.
    pub(crate) fn for_consumer(
        topics: &BTreeMap<String, KafkaTopicConfig>,
        labels: &BTreeMap<String, String>,
    ) -> Self {
        let mut routes = HashMap::new();
        for (logical, config) in topics {
            let route = config
                .routes
                .iter()
                .find(|r| r.topic.is_some() && matches(&r.labels, labels));
            if let Some(topic) = route.and_then(|r| r.topic.as_deref())
                && topic != logical
            {
                routes.insert(logical.clone(), topic.into());
            }
        }
        Self { routes }
    }

    /// The physical topic of `logical`.
    pub(crate) fn physical<'a>(&'a self, logical: &'a str) -> &'a str {
        self.routes.get(logical).map_or(logical, |topic| topic)
    }

    /// The logical topic whose records are on `physical` (itself when no route leads there).
    pub(crate) fn logical<'a>(&'a self, physical: &'a str) -> &'a str {
        self.routes
            .iter()
            .find(|(_, topic)| &***topic == physical)
            .map_or(physical, |(logical, _)| logical.as_str())
    }
}

fn matches(required: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    required
        .iter()
        .all(|(key, value)| labels.get(key) == Some(value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshlib::MeshConfig;

    fn topics(toml: &str) -> BTreeMap<String, KafkaTopicConfig> {
        let config = MeshConfig::from_toml(toml).unwrap();
        config.kafka["events"].topics.clone()
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    const CANARY: &str = r#"
        [kafka.events]
        [[kafka.events.topics.orders.routes]]
        match = { version = "v2" }
        topic = "orders.canary"
        [[kafka.events.topics.orders.routes]]
        split = [{ topic = "orders", weight = 90 }, { topic = "orders.canary", weight = 10 }]
    "#;

    #[test]
    fn a_version_label_picks_its_topic_for_producers_and_consumers() {
        let topics = topics(CANARY);
        let v2 = labels(&[("version", "v2")]);
        let producer = TopicRoutes::for_producer(&topics, &v2, |_| unreachable!());
        assert_eq!(producer.physical("orders"), "orders.canary");
        let consumer = TopicRoutes::for_consumer(&topics, &v2);
        assert_eq!(consumer.physical("orders"), "orders.canary");
        assert_eq!(consumer.logical("orders.canary"), "orders");
        // Topics without routes are their own physical topic.
        assert_eq!(producer.physical("payments"), "payments");
    }

    #[test]
    fn a_split_sends_its_share_of_producers_and_no_consumers() {
        let topics = topics(CANARY);
        let v1 = labels(&[("version", "v1")]);
        let mut rng = fastrand::Rng::with_seed(7);
        let canaries = (0..10_000)
            .filter(|_| {
                let routes = TopicRoutes::for_producer(&topics, &v1, |n| rng.u64(..n));
                routes.physical("orders") == "orders.canary"
            })
            .count();
        // 10% of 10 000 producers: 1000 expected, 3 standard deviations is ±90.
        assert!((910..=1090).contains(&canaries), "{canaries}");
        // A stable consumer keeps reading the logical topic.
        assert_eq!(
            TopicRoutes::for_consumer(&topics, &v1).physical("orders"),
            "orders"
        );
    }

    #[test]
    fn bad_routes_are_refused_with_their_path() {
        let error = MeshConfig::from_toml(
            "[kafka.events]\n[[kafka.events.topics.orders.routes]]\ntopic = \"a\"\nsplit = [{ topic = \"b\", weight = 1 }]\n",
        )
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "kafka.events.topics.orders.routes[0].topic: give either `topic` or `split`, not both or neither"
        );
        let error = MeshConfig::from_toml(
            "[kafka.events]\n[[kafka.events.topics.orders.routes]]\nsplit = [{ topic = \"orders canary\", weight = 1 }]\n",
        )
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "kafka.events.topics.orders.routes[0].split[0].topic: \"orders canary\" is not a topic name"
        );
    }
}
