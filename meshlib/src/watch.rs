//! Following a file as it is edited, for the registry and for the mesh configuration.
//!
//! The file's directory is watched rather than the file: editors and deploy tools replace a file
//! by writing a temporary one and renaming it into place, and a watch on the file itself would
//! follow the old inode, which no longer has the name. Events for the file report a change after
//! 50 ms of quiet, so that a burst (truncate, write, close, or write and rename) costs one read.
//! A change is also reported every 5 s whatever the watcher says, because some changes make no
//! event in the directory: a file that is a symbolic link into another directory (a Kubernetes
//! ConfigMap volume swaps a link two levels up), a network file system, a directory that did not
//! exist when the watch was tried. Readers compare what they read with what they had.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;
use tokio::time::{Interval, MissedTickBehavior};

/// How long a burst of events must be quiet before the file is read.
const DEBOUNCE: Duration = Duration::from_millis(50);

/// How often the file is read whatever the watcher says.
const POLL: Duration = Duration::from_secs(5);

/// Reports when a file may have changed.
pub(crate) struct FileWatch {
    path: PathBuf,
    events_tx: mpsc::Sender<()>,
    events: mpsc::Receiver<()>,
    watcher: Option<RecommendedWatcher>,
    watch_failed: bool,
    poll: Interval,
}

impl FileWatch {
    pub(crate) fn new(path: PathBuf) -> Self {
        // One slot: an event that finds it full finds a read already due.
        let (events_tx, events) = mpsc::channel(1);
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self {
            path,
            events_tx,
            events,
            watcher: None,
            watch_failed: false,
            poll,
        }
    }

    /// Resolves when the file may have changed; the first call resolves at once, after the watch
    /// is set up, so that no edit falls between the watch and the first read.
    pub(crate) async fn changed(&mut self) {
        tokio::select! {
            _ = self.poll.tick() => {
                if self.watcher.is_none() {
                    match watch_dir(&self.path, self.events_tx.clone()) {
                        Ok(started) => self.watcher = Some(started),
                        Err(error) if !self.watch_failed => {
                            self.watch_failed = true;
                            tracing::warn!(
                                path = %self.path.display(),
                                %error,
                                poll = ?POLL,
                                "cannot watch the file's directory; reading it periodically"
                            );
                        }
                        Err(_) => {}
                    }
                }
            }
            Some(()) = self.events.recv() => {
                tokio::time::sleep(DEBOUNCE).await;
                let _ = self.events.try_recv();
            }
        }
    }
}

/// Watches the directory of `path`, signalling `events` when something may have changed the
/// file.
fn watch_dir(path: &Path, events: mpsc::Sender<()>) -> notify::Result<RecommendedWatcher> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name: Option<OsString> = path.file_name().map(OsStr::to_owned);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let concerns_file = match &event {
            Ok(event) => concerns(event, name.as_deref()),
            // The watcher lost track (its queue overflowed, say): read the file to be sure.
            Err(_) => true,
        };
        if concerns_file {
            let _ = events.try_send(());
        }
    })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

/// Whether `event`, from the directory of the file called `name`, may have changed the file.
fn concerns(event: &notify::Event, name: Option<&OsStr>) -> bool {
    // Opening and reading the file, the reader's own reads among them, change nothing.
    if let EventKind::Access(kind) = event.kind
        && kind != AccessKind::Close(AccessMode::Write)
    {
        return false;
    }
    event.need_rescan()
        || event
            .paths
            .iter()
            .any(|path| name.is_none_or(|name| path.file_name() == Some(name)))
}
