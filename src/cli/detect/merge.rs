//! `libre detect merge`: the parts of a sharded `libre detect` run joined into one file
//! ([`libre::detect::parts::merge`]).

use super::checks;
use crate::cli::Output;
use libre::detect::parts;
use serde_json::json;
use std::path::{Path, PathBuf};

/// Joins the part `files` into `dest`.
pub(super) fn run_merge(files: &[PathBuf], dest: &Path, out: Output) -> anyhow::Result<()> {
    checks::check_out_file(dest)?;
    // Each part is a rows file and its manifest (either may be named).
    let rows: Vec<PathBuf> = files
        .iter()
        .map(|f| match f.to_string_lossy().strip_suffix(".part.json") {
            Some(r) => PathBuf::from(r),
            None => f.clone(),
        })
        .collect();
    let manifests: Vec<PathBuf> = rows.iter().map(|f| parts::manifest_path(f)).collect();
    let named: Vec<(&str, &Path)> = rows
        .iter()
        .map(|f| ("a part file", f.as_path()))
        .chain(manifests.iter().map(|m| ("a part manifest", m.as_path())))
        .collect();
    crate::cli::refuse_output_over_inputs("--out", dest, &named)?;
    let m = libre::detect::parts::merge(files, dest)?;
    let c = m.counts;
    out.result(
        json!({ "out": dest, "parts": m.parts, "n": c.n, "flagged": c.flagged,
                "skipped": c.skipped }),
        || {
            format!(
                "merged {} parts into {}: {} inputs, {} flagged, {} skipped\n",
                m.parts,
                dest.display(),
                c.n,
                c.flagged,
                c.skipped
            )
        },
    );
    Ok(())
}
