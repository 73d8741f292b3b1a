//! The thread that follows an identity's files (see the module docs of [`super`] for why the
//! directories are watched and the files polled too).
//!
//! A plain thread rather than a task: an identity is made while the mesh is built, which need
//! not be inside a runtime, and a reload is a few small blocking reads.

use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Weak};

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher as _};

use super::{DEBOUNCE, POLL, Shared};

/// Starts following the files of `shared`, until it is dropped.
pub(super) fn spawn(shared: &Arc<Shared>) {
    let Some(files) = &shared.files else { return };
    // One slot: an event that finds it full finds a reload already due.
    let (events_tx, events) = mpsc::sync_channel::<()>(1);
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let relevant = match &event {
            // Reads, ours among them, change nothing.
            Ok(event) => !matches!(
                event.kind,
                EventKind::Access(kind) if kind != AccessKind::Close(AccessMode::Write)
            ),
            Err(_) => true,
        };
        if relevant {
            let _ = events_tx.try_send(());
        }
    });
    let watcher = match watcher {
        Ok(mut watcher) => {
            let mut dirs: Vec<&Path> = [&files.cert, &files.key, &files.bundle]
                .into_iter()
                .map(|path| match path.parent() {
                    Some(dir) if !dir.as_os_str().is_empty() => dir,
                    _ => Path::new("."),
                })
                .collect();
            dirs.sort();
            dirs.dedup();
            for dir in dirs {
                if let Err(error) = watcher.watch(dir, RecursiveMode::NonRecursive) {
                    tracing::warn!(
                        dir = %dir.display(),
                        %error,
                        poll = ?POLL,
                        "cannot watch the identity's directory; reading it periodically"
                    );
                }
            }
            Some(watcher)
        }
        Err(error) => {
            tracing::warn!(%error, poll = ?POLL, "cannot watch the identity's files; reading them periodically");
            None
        }
    };
    let weak: Weak<Shared> = Arc::downgrade(shared);
    let spawned = std::thread::Builder::new()
        .name("meshlib-identity".to_owned())
        .spawn(move || {
            let _watcher = watcher;
            loop {
                match events.recv_timeout(POLL) {
                    Ok(()) => {
                        std::thread::sleep(DEBOUNCE);
                        let _ = events.try_recv();
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => {
                        // No watcher: polling alone.
                        std::thread::sleep(POLL);
                    }
                }
                let Some(shared) = weak.upgrade() else { break };
                let _ = shared.reload(false);
            }
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "cannot start the identity watcher; rotation needs Identity::reload");
    }
}
