//! Noticing that files changed, including the way the kubelet updates a mounted Secret or ConfigMap.
//!
//! The kubelet never rewrites `tls.crt` in place: it writes a new timestamped directory and atomically
//! swaps the `..data` symlink that `tls.crt` points through. A watch on the file misses that, so we watch
//! the parent directories and compare file contents (following symlinks); a periodic poll backs the
//! watch up for filesystems that send no events.

use std::collections::BTreeSet;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How long to wait for more events after the first, so a multi-file update is seen once.
const DEBOUNCE: Duration = Duration::from_millis(150);

/// Contents fingerprint of a set of files; a missing file hashes as missing.
pub fn fingerprint(paths: &[PathBuf]) -> u64 {
    let mut h = DefaultHasher::new();
    for p in paths {
        std::fs::read(p).ok().hash(&mut h);
    }
    h.finish()
}

/// Send `()` whenever the contents of any of `paths` change, until `shutdown`.
/// The receiver re-reads the files itself; a change during its read is reported again.
pub fn watch_files(
    paths: Vec<PathBuf>,
    poll_every: Duration,
    shutdown: CancellationToken,
) -> mpsc::Receiver<()> {
    let (changed_tx, changed_rx) = mpsc::channel(1);
    let (event_tx, mut event_rx) = mpsc::unbounded_channel::<()>();
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.is_ok() {
            let _ = event_tx.send(());
        }
    });
    let watcher = match watcher {
        Ok(mut w) => {
            let dirs: BTreeSet<PathBuf> = paths.iter().map(|p| parent_dir(p)).collect();
            for dir in dirs {
                if let Err(e) = w.watch(&dir, RecursiveMode::NonRecursive) {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot watch directory; relying on polling");
                }
            }
            Some(w)
        }
        Err(e) => {
            tracing::warn!(error = %e, "file watching unavailable; relying on polling");
            None
        }
    };
    tokio::spawn(async move {
        let _watcher = watcher; // dropped (and unwatched) when this task ends
        let mut last = fingerprint(&paths);
        let mut poll = tokio::time::interval(poll_every);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                Some(()) = event_rx.recv() => {
                    tokio::time::sleep(DEBOUNCE).await;
                    while event_rx.try_recv().is_ok() {}
                }
                _ = poll.tick() => {}
            }
            let now = fingerprint(&paths);
            if now != last {
                last = now;
                if changed_tx.send(()).await.is_err() {
                    return;
                }
            }
        }
    });
    changed_rx
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}
