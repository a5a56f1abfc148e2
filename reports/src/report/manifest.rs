//! `manifest.json`: what a report was made from (every input with its size and SHA-256), with
//! which options and seed, by which generator, and which files it holds.
use super::ReportOptions;
use crate::error::{ReportError, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

#[derive(Serialize)]
struct ManifestInput {
    file: String,
    bytes: u64,
    sha256: String,
}

fn sha256_file(path: &Path) -> Result<(u64, String)> {
    let bytes = std::fs::read(path).map_err(|e| ReportError::io(path, e))?;
    let digest = Sha256::digest(&bytes);
    let hex = digest
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    Ok((bytes.len() as u64, hex))
}

/// The manifest as pretty-printed JSON with a final newline.
pub(super) fn manifest_json(
    inputs: &[PathBuf],
    opts: &ReportOptions,
    tables: &[String],
    figures: &[String],
    detection_groups: usize,
) -> Result<String> {
    let mut listed = Vec::new();
    for p in inputs {
        let (bytes, sha256) = sha256_file(p)?;
        listed.push(ManifestInput {
            file: p.display().to_string(),
            bytes,
            sha256,
        });
    }
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let manifest = serde_json::json!({
        "generator": opts.generator,
        "reports_version": env!("CARGO_PKG_VERSION"),
        "created_unix": created,
        "inputs": listed,
        "options": {
            "title": opts.title,
            "subset": opts.subset,
            "bootstrap": opts.bootstrap,
            "seed": opts.bootstrap.map(|b| b.seed),
            "png": opts.png,
        },
        "tables": tables,
        "figures": figures,
        "detection_groups": detection_groups,
    });
    Ok(serde_json::to_string_pretty(&manifest)? + "\n")
}
