//! Replacing a directory all at once: the new contents are written into a fresh hidden sibling
//! and renamed into place only when complete, so a crash or an error never leaves a half-written
//! directory, and an older one at the destination survives until its replacement is whole.
use crate::error::{ReportError, Result};
use std::path::{Path, PathBuf};

/// A sibling path of `dest` with a unique hidden name (`.NAME.KIND-PID-NANOS`).
fn sibling(dest: &Path, kind: &str) -> PathBuf {
    let name = dest
        .file_name()
        .map_or("report".into(), |n| n.to_string_lossy().into_owned());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    dest.with_file_name(format!(".{name}.{kind}-{}-{nanos}", std::process::id()))
}

/// Runs `fill` on a new empty temporary sibling directory of `dest`, then moves it to `dest`
/// (replacing whatever was there). If `fill` fails, the temporary directory is removed and
/// `dest` is left as it was.
pub(super) fn replace_dir<T>(dest: &Path, fill: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| ReportError::io(&parent, e))?;
    let tmp = sibling(dest, "tmp");
    std::fs::create_dir(&tmp).map_err(|e| ReportError::io(&tmp, e))?;
    // Not the `old` sibling: in the moment it exists it is the user's only copy of the report.
    let _cleanup = crate::cleanup::track(&tmp);
    let value = match fill(&tmp) {
        Ok(v) => v,
        Err(e) => {
            // Best effort: the error that matters is the one that stopped the report.
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    // A directory cannot be renamed over a non-empty one, so the old one steps aside first
    // and comes back if the new one cannot take its place.
    let old = sibling(dest, "old");
    let had_old = dest.exists();
    if had_old {
        std::fs::rename(dest, &old).map_err(|e| ReportError::io(dest, e))?;
    }
    if let Err(e) = std::fs::rename(&tmp, dest) {
        if had_old {
            let _ = std::fs::rename(&old, dest);
        }
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(ReportError::io(dest, e));
    }
    if had_old {
        std::fs::remove_dir_all(&old).map_err(|e| ReportError::io(&old, e))?;
    }
    Ok(value)
}
