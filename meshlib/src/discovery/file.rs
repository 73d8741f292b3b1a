//! File-backed discovery: a TOML registry of services and their endpoints, followed as it is
//! edited (see [`FileRegistry`]).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::{StreamExt as _, stream};
use serde::Deserialize;
use tokio::sync::watch;

use super::{Change, Changes, Endpoint, ResolveError, Resolver};
use crate::config::EndpointConfig;
use crate::watch::FileWatch;

/// Endpoints listed in a TOML registry file, reloaded when the file changes.
///
/// Cheap to clone; clones share one watcher, which starts on the first
/// [`resolve`](Resolver::resolve) and stops when every clone and every stream it returned are
/// gone.
///
/// ```toml
/// [services]
/// reviews = ["127.0.0.1:9001", { addr = "127.0.0.1:9002", labels = { version = "v2" } }]
/// ratings = ["127.0.0.1:9101"]
/// ```
///
/// A registry file is the smallest control plane there is: a deploy script, a configuration
/// management run or a person writes where each service runs, and every process that names the
/// file follows the edits without a restart. It is the shape of Envoy's file-based EDS (a watched
/// `path` whose contents replace a cluster's endpoints) and of Finagle's filesystem announcer and
/// resolver. Each endpoint is written as in the mesh configuration's static lists: an address, or
/// a table with `addr`, `labels` and `weight`. A service the file does not list has no endpoints.
///
/// **Reloading.** The file's directory is watched (so that a file replaced by a rename is
/// followed too), bursts of events cost one read, and a slow poll covers changes no event
/// reports. A read that finds nothing new changes nothing.
///
/// **Bad edits.** A file that cannot be read or parsed is reported to every service's stream as
/// an error naming the file, the key and the line; the last good endpoints stay in use, as Envoy
/// keeps the last accepted update when a new one is rejected. A typo in the registry must not
/// empty every service that reads it. The next good edit takes effect as usual. The `[services]`
/// table is required for the same reason: a file caught half-written, right after it was
/// truncated, reads as an error rather than as a registry with no services. Writing the file
/// atomically (a temporary file renamed into place) avoids half-written reads altogether.
///
/// **One stream per service.** Each stream reports its own service only: an edit that leaves a
/// service's endpoints as they were (reordered, say) sends that service nothing. After an error,
/// the next good read is sent even when unchanged, which tells the consumer that the registry is
/// current again (the balancer clears its last error on it).
#[derive(Clone)]
pub struct FileRegistry {
    shared: Arc<Shared>,
}

struct Shared {
    path: PathBuf,
    /// The file as the watcher last read it, once a `resolve` has started the watcher. Holding a
    /// receiver keeps the watcher running while any clone of the registry lives.
    state: Mutex<Option<watch::Receiver<Arc<State>>>>,
}

impl fmt::Debug for FileRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileRegistry")
            .field("path", &self.shared.path)
            .finish_non_exhaustive()
    }
}

impl FileRegistry {
    /// A registry read from `path`.
    ///
    /// Nothing is read until the first [`resolve`](Resolver::resolve); a file that is missing or
    /// invalid then is reported on the streams, and followed until it is fixed.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            shared: Arc::new(Shared {
                path: path.into(),
                state: Mutex::new(None),
            }),
        }
    }

    fn subscribe(&self) -> watch::Receiver<Arc<State>> {
        let mut current = self
            .shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // A closed channel means the watcher's runtime has shut down: the registry may be used
        // again from another runtime, which gets a watcher of its own.
        if let Some(state) = current.as_ref().filter(|state| state.has_changed().is_ok()) {
            return state.clone();
        }
        let (sender, receiver) = watch::channel(Arc::default());
        tokio::spawn(watch_file(self.shared.path.clone(), sender));
        *current = Some(receiver.clone());
        receiver
    }
}

impl Resolver for FileRegistry {
    fn resolve(&self, service: &str) -> Changes {
        Subscription::changes(service, self.subscribe())
    }
}

/// Each service's endpoints as the file lists them, sorted by address so that reordering the
/// file changes nothing.
type Services = BTreeMap<String, Vec<Endpoint>>;

/// What the watcher knows of the file.
#[derive(Debug, Default)]
struct State {
    /// The last contents that were read and parsed; `None` until a read succeeds.
    services: Option<Arc<Services>>,
    /// Why the file as it is now cannot be used; `None` when `services` is its current contents.
    failure: Option<Failure>,
}

#[derive(Debug)]
struct Failure {
    /// Tells one failure from the next, so that each stream reports each failure once.
    id: u64,
    error: ResolveError,
}

impl State {
    /// The state after a read of the file, or `None` when nothing a stream reports has changed.
    fn after(&self, read: Result<Services, ResolveError>, failures: &mut u64) -> Option<Self> {
        match read {
            Ok(services) => {
                if self.failure.is_none() && self.services.as_deref() == Some(&services) {
                    return None;
                }
                Some(Self {
                    services: Some(Arc::new(services)),
                    failure: None,
                })
            }
            Err(error) => {
                // The periodic read of a file that is still broken is not news.
                let message = error.to_string();
                if self
                    .failure
                    .as_ref()
                    .is_some_and(|failure| failure.error.to_string() == message)
                {
                    return None;
                }
                *failures += 1;
                Some(Self {
                    services: self.services.clone(),
                    failure: Some(Failure {
                        id: *failures,
                        error,
                    }),
                })
            }
        }
    }
}

/// Follows the file at `path` into `state` until nobody holds a receiver of it.
async fn watch_file(path: PathBuf, state: watch::Sender<Arc<State>>) {
    let mut watch = FileWatch::new(path.clone());
    let mut failures = 0;
    loop {
        tokio::select! {
            () = state.closed() => break,
            () = watch.changed() => {}
        }
        let read = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || load(&path)).await
        };
        // Only a runtime that is shutting down fails to run the read.
        let Ok(read) = read else { break };
        state.send_if_modified(|current| match current.after(read, &mut failures) {
            Some(next) => {
                crate::telemetry::metrics::registry_reloaded(next.failure.is_none());
                match &next.failure {
                    Some(failure) => tracing::debug!(
                        path = %path.display(),
                        error = %failure.error,
                        "registry unusable; keeping the last good endpoints"
                    ),
                    None => tracing::debug!(path = %path.display(), "registry reloaded"),
                }
                *current = Arc::new(next);
                true
            }
            None => false,
        });
    }
}

/// Reads and parses the registry at `path`; the error names the file.
fn load(path: &Path) -> Result<Services, ResolveError> {
    let text = std::fs::read_to_string(path).map_err(|error| {
        ResolveError::new(format_args!("{}: cannot read: {error}", path.display()))
    })?;
    parse(&text).map_err(|error| ResolveError::new(format_args!("{}: {error}", path.display())))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    /// Required: see the module docs.
    services: BTreeMap<String, Vec<EndpointConfig>>,
}

/// Parses a registry; the error names the key path and, where toml knows it, the line and column.
fn parse(text: &str) -> Result<Services, String> {
    let deserializer =
        toml::Deserializer::parse(text).map_err(|error| located(text, "", &error))?;
    let file: RegistryFile = serde_path_to_error::deserialize(deserializer)
        .map_err(|error| located(text, &error.path().to_string(), error.inner()))?;
    let mut services = Services::new();
    for (name, entries) in file.services {
        let mut seen = HashMap::with_capacity(entries.len());
        let mut endpoints = Vec::with_capacity(entries.len());
        for (i, entry) in entries.iter().enumerate() {
            let at = format!("services.{name}[{i}]");
            if entry.weight == 0 {
                return Err(format!(
                    "{at}.weight: 0 is not a weight: weights start at 1"
                ));
            }
            // The balancer keys endpoints by address: a second entry would silently replace
            // the first.
            if let Some(first) = seen.insert(entry.addr, i) {
                return Err(format!(
                    "{at}.addr: {} is already listed at services.{name}[{first}]",
                    entry.addr
                ));
            }
            endpoints.push(entry.to_endpoint());
        }
        endpoints.sort_by_key(Endpoint::addr);
        services.insert(name, endpoints);
    }
    Ok(services)
}

/// toml's message on one line, after the key path and followed by the line and column, as the
/// mesh configuration reports its own errors.
fn located(text: &str, key: &str, error: &toml::de::Error) -> String {
    let message = error.message().trim().replace('\n', "; ");
    let mut out = match key {
        "" | "." => message,
        key => format!("{key}: {message}"),
    };
    if let Some(span) = error.span() {
        let before = text.get(..span.start).unwrap_or(text);
        let line = before.matches('\n').count() + 1;
        let column = before.chars().rev().take_while(|&c| c != '\n').count() + 1;
        let _ = write!(out, " (line {line}, column {column})");
    }
    out
}

/// One service's view of the registry, and what its stream has told its consumer so far.
struct Subscription {
    service: String,
    state: watch::Receiver<Arc<State>>,
    /// The endpoints last sent in a `Reset`.
    sent: Option<Vec<Endpoint>>,
    /// The failure reported since that `Reset`, if any.
    reported: Option<u64>,
    queue: VecDeque<Result<Change, ResolveError>>,
}

type Item = Result<Change, ResolveError>;

impl Subscription {
    fn changes(service: &str, mut state: watch::Receiver<Arc<State>>) -> Changes {
        // The current state is news to a new stream, whatever other streams have seen.
        state.mark_changed();
        let subscription = Self {
            service: service.to_owned(),
            state,
            sent: None,
            reported: None,
            queue: VecDeque::new(),
        };
        Box::pin(stream::unfold(subscription, Self::next).fuse())
    }

    async fn next(mut self) -> Option<(Item, Self)> {
        loop {
            if let Some(item) = self.queue.pop_front() {
                return Some((item, self));
            }
            // The channel closes only when the watcher's runtime shuts down.
            self.state.changed().await.ok()?;
            let state = Arc::clone(&self.state.borrow_and_update());
            self.observe(&state);
        }
    }

    fn observe(&mut self, state: &State) {
        if let Some(services) = &state.services {
            let endpoints = services.get(&self.service).map_or(&[][..], Vec::as_slice);
            let recovered = state.failure.is_none() && self.reported.is_some();
            if recovered || self.sent.as_deref() != Some(endpoints) {
                self.sent = Some(endpoints.to_vec());
                self.reported = None;
                self.queue.push_back(Ok(Change::Reset(endpoints.to_vec())));
            }
        }
        if let Some(failure) = &state.failure
            && self.reported != Some(failure.id)
        {
            self.reported = Some(failure.id);
            self.queue.push_back(Err(failure.error.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use futures_util::FutureExt as _;

    use super::*;

    /// Every wait in these tests is bounded by this, shorter than the watcher's 5 s poll so that
    /// a broken watch fails them; a reload normally takes 50 ms.
    const WAIT: Duration = Duration::from_secs(3);

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    fn parse_error(text: &str) -> String {
        parse(text).expect_err("the registry should not parse")
    }

    async fn next(changes: &mut Changes) -> Item {
        tokio::time::timeout(WAIT, changes.next())
            .await
            .expect("no change within the wait")
            .expect("the stream ended")
    }

    fn reset(item: Item) -> Vec<SocketAddr> {
        match item {
            Ok(Change::Reset(endpoints)) => endpoints.iter().map(Endpoint::addr).collect(),
            other => panic!("expected a reset, got {other:?}"),
        }
    }

    fn error(item: Item) -> String {
        match item {
            Err(error) => error.to_string(),
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn addresses_and_tables_parse_sorted_by_address() {
        let services = parse(
            r#"
            [services]
            reviews = [
                { addr = "127.0.0.1:9002", labels = { version = "v2" }, weight = 3 },
                "127.0.0.1:9001",
            ]
            ratings = []
            "#,
        )
        .unwrap();
        let reviews = &services["reviews"];
        assert_eq!(reviews[0], Endpoint::new(addr("127.0.0.1:9001")));
        assert_eq!(
            reviews[1],
            Endpoint::new(addr("127.0.0.1:9002"))
                .with_label("version", "v2")
                .with_weight(3)
        );
        assert_eq!(services["ratings"], []);
        assert_eq!(services.len(), 2);
    }

    #[test]
    fn a_bad_address_names_its_key_path_line_and_column() {
        let message = parse_error(
            "[services]\nreviews = [\"127.0.0.1:9001\", { addr = \"localhost:9002\" }]\n",
        );
        assert!(
            message.starts_with("services.reviews[1].addr: "),
            "{message}"
        );
        assert!(message.ends_with("(line 2, column 39)"), "{message}");

        let message = parse_error("[services]\nreviews = [\"127.0.0.1\"]\n");
        assert_eq!(
            message,
            "services.reviews[0]: \"127.0.0.1\" is not an address of the form ip:port \
             (line 2, column 12)"
        );
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_path() {
        let message = parse_error("[service]\nreviews = []\n");
        assert!(
            message.starts_with("service: unknown field `service`"),
            "{message}"
        );

        let message = parse_error(
            "[services]\nreviews = [{ addr = \"127.0.0.1:1\", lables = { version = \"v2\" } }]\n",
        );
        assert!(
            message.starts_with("services.reviews[0].lables: unknown field `lables`"),
            "{message}"
        );
    }

    #[test]
    fn broken_toml_names_the_line() {
        let message = parse_error("[services]\nreviews = [\"127.0.0.1:1\"\n");
        assert!(message.contains("(line 2, column "), "{message}");
        assert!(!message.contains('\n'), "{message}");
    }

    #[test]
    fn an_empty_file_is_an_error_not_an_empty_registry() {
        let message = parse_error("");
        assert!(message.contains("missing field `services`"), "{message}");
        assert_eq!(parse("[services]\n").unwrap(), Services::new());
    }

    #[test]
    fn zero_weights_and_repeated_addresses_are_rejected() {
        assert_eq!(
            parse_error("[services]\nreviews = [{ addr = \"127.0.0.1:1\", weight = 0 }]\n"),
            "services.reviews[0].weight: 0 is not a weight: weights start at 1"
        );
        assert_eq!(
            parse_error(
                "[services]\nreviews = [\"127.0.0.1:1\", \"127.0.0.1:2\", { addr = \"127.0.0.1:1\" }]\n"
            ),
            "services.reviews[2].addr: 127.0.0.1:1 is already listed at services.reviews[0]"
        );
    }

    #[test]
    fn load_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.toml");
        let message = load(&path).unwrap_err().to_string();
        assert!(
            message.starts_with(&format!("{}: cannot read: ", path.display())),
            "{message}"
        );

        std::fs::write(&path, "[services]\nreviews = [\"nowhere\"]\n").unwrap();
        let message = load(&path).unwrap_err().to_string();
        assert!(
            message.starts_with(&format!("{}: services.reviews[0]: ", path.display())),
            "{message}"
        );
    }

    #[tokio::test]
    async fn each_service_hears_only_of_its_own_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.toml");
        std::fs::write(
            &path,
            "[services]\nreviews = [\"127.0.0.1:1\"]\nratings = [\"127.0.0.1:2\"]\n",
        )
        .unwrap();
        let registry = FileRegistry::new(&path);
        let mut reviews = registry.resolve("reviews");
        let mut ratings = registry.resolve("ratings");
        let mut details = registry.resolve("details");
        assert_eq!(reset(next(&mut reviews).await), [addr("127.0.0.1:1")]);
        assert_eq!(reset(next(&mut ratings).await), [addr("127.0.0.1:2")]);
        assert_eq!(reset(next(&mut details).await), []);

        std::fs::write(
            &path,
            "[services]\nratings = [\"127.0.0.1:3\", \"127.0.0.1:2\"]\nreviews = [\"127.0.0.1:1\"]\n",
        )
        .unwrap();
        assert_eq!(
            reset(next(&mut ratings).await),
            [addr("127.0.0.1:2"), addr("127.0.0.1:3")]
        );
        // The state that ratings has just seen is there for reviews too; reviews has nothing
        // to say about it.
        assert!(reviews.next().now_or_never().is_none());
        assert!(details.next().now_or_never().is_none());

        std::fs::write(&path, "[services]\nreviews = [\"127.0.0.1:4\"]\n").unwrap();
        assert_eq!(reset(next(&mut reviews).await), [addr("127.0.0.1:4")]);
        assert_eq!(reset(next(&mut ratings).await), []);
    }

    #[tokio::test]
    async fn a_bad_edit_keeps_the_last_good_set_until_a_good_edit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.toml");
        std::fs::write(&path, "[services]\nreviews = [\"127.0.0.1:1\"]\n").unwrap();
        let registry = FileRegistry::new(&path);
        let mut reviews = registry.resolve("reviews");
        let mut ratings = registry.resolve("ratings");
        assert_eq!(reset(next(&mut reviews).await), [addr("127.0.0.1:1")]);
        assert_eq!(reset(next(&mut ratings).await), []);

        std::fs::write(
            &path,
            "[services]\nreviews = [\"127.0.0.1:1\", { adr = \"x\" }]\n",
        )
        .unwrap();
        for changes in [&mut reviews, &mut ratings] {
            let message = error(next(changes).await);
            assert!(
                message.starts_with(&format!("{}: services.reviews[1].adr: ", path.display())),
                "{message}"
            );
        }

        // A late subscriber learns the last good set, then why it may be stale.
        let mut late = registry.clone().resolve("reviews");
        assert_eq!(reset(next(&mut late).await), [addr("127.0.0.1:1")]);
        assert!(error(next(&mut late).await).contains("services.reviews[1].adr"));

        // Fixed with the same endpoints: each stream hears that the set is current again.
        std::fs::write(&path, "[services]\nreviews = [\"127.0.0.1:1\"]\n").unwrap();
        assert_eq!(reset(next(&mut reviews).await), [addr("127.0.0.1:1")]);
        assert_eq!(reset(next(&mut ratings).await), []);
        assert_eq!(reset(next(&mut late).await), [addr("127.0.0.1:1")]);
    }

    #[tokio::test]
    async fn a_file_missing_at_start_is_reported_then_followed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.toml");
        let mut reviews = FileRegistry::new(&path).resolve("reviews");
        let message = error(next(&mut reviews).await);
        assert!(
            message.starts_with(&format!("{}: cannot read: ", path.display())),
            "{message}"
        );

        // Written and renamed into place, as deploy tools do.
        let staged = dir.path().join(".registry.toml.tmp");
        std::fs::write(&staged, "[services]\nreviews = [\"127.0.0.1:1\"]\n").unwrap();
        std::fs::rename(&staged, &path).unwrap();
        assert_eq!(reset(next(&mut reviews).await), [addr("127.0.0.1:1")]);
    }

    #[tokio::test]
    async fn clones_share_one_watcher() {
        let dir = tempfile::tempdir().unwrap();
        let registry = FileRegistry::new(dir.path().join("registry.toml"));
        let clone = registry.clone();
        let _reviews = registry.resolve("reviews");
        let _ratings = clone.resolve("ratings");
        let subscribed = |registry: &FileRegistry| {
            registry
                .shared
                .state
                .lock()
                .unwrap()
                .clone()
                .expect("started by resolve")
        };
        assert!(subscribed(&registry).same_channel(&subscribed(&clone)));
    }

    #[tokio::test]
    async fn the_watcher_stops_when_nobody_listens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.toml");
        std::fs::write(&path, "[services]\nreviews = [\"127.0.0.1:1\"]\n").unwrap();
        let (sender, receiver) = watch::channel(Arc::default());
        let watcher = tokio::spawn(watch_file(path, sender));
        let mut reviews = Subscription::changes("reviews", receiver);
        assert_eq!(reset(next(&mut reviews).await), [addr("127.0.0.1:1")]);
        drop(reviews);
        tokio::time::timeout(WAIT, watcher)
            .await
            .expect("the watcher should stop")
            .unwrap();
    }
}
