//! Temporary outputs that a signal must not leave behind.
//!
//! Every output is written to a hidden temporary sibling and renamed into place when complete, so
//! a crash never leaves a half-written file under the real name. A SIGINT or SIGTERM, however,
//! ends the process without running destructors, and the hidden temporary stays. Writers record
//! their temporaries here while they exist ([`track`]); the binary's signal handler calls
//! [`remove_all`] before the process ends. The registry lives in this dependency-free crate so
//! that every crate of the workspace can use it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

static TRACKED: Mutex<BTreeMap<u64, PathBuf>> = Mutex::new(BTreeMap::new());
static NEXT: AtomicU64 = AtomicU64::new(0);

/// A temporary path recorded for removal on a signal; dropping it forgets the path (the writer
/// has renamed or removed it by then).
#[derive(Debug)]
#[must_use = "the path is forgotten when the guard is dropped"]
pub struct Tracked(u64);

impl Drop for Tracked {
    fn drop(&mut self) {
        lock().remove(&self.0);
    }
}

fn lock() -> std::sync::MutexGuard<'static, BTreeMap<u64, PathBuf>> {
    // A writer that panicked while holding the lock left the map intact: keep using it.
    TRACKED.lock().unwrap_or_else(|e| e.into_inner())
}

/// Records `path` (a file or a directory) until the returned guard is dropped.
pub fn track(path: &Path) -> Tracked {
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    lock().insert(id, path.to_path_buf());
    Tracked(id)
}

/// The paths recorded now.
pub fn tracked() -> Vec<PathBuf> {
    lock().values().cloned().collect()
}

/// Removes every recorded path (best effort: a path already gone is fine) and forgets them.
/// Returns how many existed and were removed.
pub fn remove_all() -> usize {
    let paths: Vec<PathBuf> = std::mem::take(&mut *lock()).into_values().collect();
    remove_paths(&paths)
}

fn remove_paths(paths: &[PathBuf]) -> usize {
    paths
        .iter()
        .filter(|p| match std::fs::symlink_metadata(p) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(p).is_ok(),
            Ok(_) => std::fs::remove_file(p).is_ok(),
            Err(_) => false,
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracked_paths_are_removed_and_dropped_guards_forgotten() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join(".f.tmp");
        let dir = d.path().join(".d.tmp");
        let kept = d.path().join("kept");
        std::fs::write(&file, b"x").unwrap();
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("inner"), b"y").unwrap();
        std::fs::write(&kept, b"z").unwrap();
        let _a = track(&file);
        let _b = track(&dir);
        let c = track(&kept);
        drop(c); // renamed into place: no longer temporary
                 // Other tests of this binary track their own temporaries concurrently: look only at ours,
                 // and remove only ours (remove_all would pull theirs away mid-write).
        let now = tracked();
        assert!(now.contains(&file) && now.contains(&dir) && !now.contains(&kept));
        let ours: Vec<PathBuf> = now
            .into_iter()
            .filter(|p| p.starts_with(d.path()))
            .collect();
        assert_eq!(remove_paths(&ours), 2);
        assert!(!file.exists() && !dir.exists() && kept.exists());
    }
}
