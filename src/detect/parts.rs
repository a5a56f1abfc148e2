//! The parts of a sharded `libre detect` run and their merge (docs/cluster.md).
//!
//! A shard writes its rows file atomically, then `ROWS.part.json` beside it: the manifest says
//! which part of which run the rows are (shard K/N, the batch and row ranges, every setting that
//! changes a score, the weights' and rows' sha256). Its presence marks the part finished, so a
//! killed task leaves no manifest and the merge names it as missing. [`merge`] refuses parts of
//! different runs, versions or shard counts, overlapping or missing parts, and rows changed after
//! their part was written, naming the file. [`commit_part`] writes a part.

use super::input::Chunk;
use crate::cache::AtomicFile;
use crate::jobs::shard::Shard;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The manifest's format tag.
pub const PART_FORMAT: &str = "libre-detect-part/1";

/// What a finished shard records beside its rows.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PartManifest {
    pub format: String,
    pub libre_version: String,
    pub shard: Shard,
    /// The global batch range `[start, end)` this part computed, of `total_batches`.
    pub batches: (usize, usize),
    pub total_batches: usize,
    /// The global input range `[start, end)`, of `total_inputs`.
    pub rows: (usize, usize),
    pub total_inputs: usize,
    /// Everything every part of one run must agree on (inputs and their digest, weights and
    /// their sha256, scores, threshold, samples, batch size, seed, image policy, output format).
    pub run: BTreeMap<String, Value>,
    /// The rows file's name (in the same directory) and sha256.
    pub rows_file: String,
    pub rows_sha256: String,
    /// Inputs, flagged and skipped rows in this part.
    pub counts: Counts,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Counts {
    pub n: usize,
    pub flagged: usize,
    pub skipped: usize,
}

/// The manifest path of a rows file.
pub fn manifest_path(rows: &Path) -> PathBuf {
    let mut s = rows.as_os_str().to_os_string();
    s.push(".part.json");
    PathBuf::from(s)
}

/// The file a shard writes for `--out PATH`: `{shard}` in PATH becomes K; otherwise `.K-of-N`
/// goes before the extension (`rows.csv` -> `rows.2-of-4.csv`), so parts never overwrite each
/// other.
pub fn part_path(out: &Path, shard: Shard) -> PathBuf {
    let s = out.to_string_lossy();
    if s.contains("{shard}") {
        return PathBuf::from(s.replace("{shard}", &shard.index.to_string()));
    }
    let tag = format!("{}-of-{}", shard.index, shard.count);
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let new = match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => format!("{stem}.{tag}.{ext}"),
        _ => format!("{name}.{tag}"),
    };
    out.with_file_name(new)
}

/// Moves a finished part's rows into place at `path` and writes its manifest beside them. A
/// stale manifest must never vouch for new rows: it goes first, and comes back last. `chunks`
/// are the whole run's batches (the part's are `shard.range(chunks.len())`), `run` the settings
/// every part must agree on, `counts` what this part's rows hold.
pub fn commit_part(
    rows: AtomicFile,
    path: &Path,
    shard: Shard,
    chunks: &[Chunk],
    run: BTreeMap<String, Value>,
    counts: Counts,
) -> Result<()> {
    let mp = manifest_path(path);
    if mp.exists() {
        std::fs::remove_file(&mp)
            .map_err(|e| Error::io(format!("removing {}", mp.display()), e))?;
    }
    rows.commit()?;
    let batches = shard.range(chunks.len());
    let size = |c: &[Chunk]| -> usize { c.iter().map(|c| c.end - c.start).sum() };
    let rows_start = size(&chunks[..batches.start]);
    let man = PartManifest {
        format: PART_FORMAT.into(),
        libre_version: crate::VERSION.into(),
        shard,
        batches: (batches.start, batches.end),
        total_batches: chunks.len(),
        rows: (rows_start, rows_start + size(&chunks[batches.clone()])),
        total_inputs: size(chunks),
        run,
        rows_file: path
            .file_name()
            .map(|f| f.to_string_lossy().to_string())
            .unwrap_or_default(),
        rows_sha256: crate::cache::sha256_file(path)?,
        counts,
    };
    crate::cache::write_atomic(&mp, &serde_json::to_vec_pretty(&man)?)
}

impl PartManifest {
    pub fn read(rows: &Path) -> Result<PartManifest> {
        let mp = manifest_path(rows);
        let bytes = std::fs::read(&mp).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::bad_file(
                    rows,
                    format!(
                        "no {} beside it: not a finished part of a sharded `libre detect` run (a \
                         killed task leaves none; rerun that shard)",
                        mp.file_name().unwrap_or_default().to_string_lossy()
                    ),
                )
            } else {
                Error::io(format!("reading {}", mp.display()), e)
            }
        })?;
        let m: PartManifest = serde_json::from_slice(&bytes)
            .map_err(|e| Error::bad_file(&mp, format!("not a part manifest: {e}")))?;
        if m.format != PART_FORMAT {
            return Err(Error::bad_file(
                &mp,
                format!("format '{}', this libre reads '{PART_FORMAT}'", m.format),
            ));
        }
        Ok(m)
    }
}

/// The result of [`merge`].
#[derive(Debug, Clone)]
pub struct Merged {
    pub parts: usize,
    pub counts: Counts,
    pub total_inputs: usize,
}

/// Joins the rows of a complete set of parts (any order on the command line) into `dest`,
/// atomically, in the order of an unsharded run: the CSV header once, then every part's rows.
pub fn merge(files: &[PathBuf], dest: &Path) -> Result<Merged> {
    if files.is_empty() {
        return Err(Error::invalid("detect merge: no part files given"));
    }
    // A manifest named directly stands for its rows file.
    let files: Vec<PathBuf> = files
        .iter()
        .map(|f| {
            let s = f.to_string_lossy();
            match s.strip_suffix(".part.json") {
                Some(r) => PathBuf::from(r),
                None => f.clone(),
            }
        })
        .collect();
    let mans: Vec<PartManifest> = files
        .iter()
        .map(|f| PartManifest::read(f))
        .collect::<Result<_>>()?;
    let (f0, m0) = (&files[0], &mans[0]);
    let mut by_index: BTreeMap<usize, usize> = BTreeMap::new();
    for (i, (f, m)) in files.iter().zip(&mans).enumerate() {
        let differ = |what: &str, a: &dyn std::fmt::Display, b: &dyn std::fmt::Display| {
            Error::bad_file(
                f,
                format!(
                    "{what} differs from {} ({b} here, {a} there): parts of different runs, \
                     refusing to merge",
                    f0.display()
                ),
            )
        };
        let show = |v: Option<&Value>| v.map(Value::to_string).unwrap_or_else(|| "unset".into());
        if m.libre_version != m0.libre_version {
            return Err(differ(
                "the libre version",
                &m0.libre_version,
                &m.libre_version,
            ));
        }
        if m.shard.count != m0.shard.count {
            return Err(differ("the shard count", &m0.shard.count, &m.shard.count));
        }
        if (m.total_inputs, m.total_batches) != (m0.total_inputs, m0.total_batches) {
            return Err(differ("the input count", &m0.total_inputs, &m.total_inputs));
        }
        for key in m0.run.keys().chain(m.run.keys()) {
            if m0.run.get(key) != m.run.get(key) {
                return Err(differ(
                    &format!("setting '{key}'"),
                    &show(m0.run.get(key)),
                    &show(m.run.get(key)),
                ));
            }
        }
        if let Some(&j) = by_index.get(&m.shard.index) {
            return Err(Error::bad_file(
                f,
                format!(
                    "shard {} is given twice ({} too): overlapping parts",
                    m.shard,
                    files[j].display()
                ),
            ));
        }
        let expect = m.shard.range(m.total_batches);
        if (m.batches.0, m.batches.1) != (expect.start, expect.end) {
            return Err(Error::bad_file(
                f,
                format!(
                    "shard {} holds batches {:?}, expected {expect:?}",
                    m.shard, m.batches
                ),
            ));
        }
        let sha = crate::cache::sha256_file(f)?;
        if sha != m.rows_sha256 {
            return Err(Error::bad_file(
                f,
                format!(
                    "changed after shard {} wrote it (sha256 differs from its manifest): rerun \
                     that shard",
                    m.shard
                ),
            ));
        }
        by_index.insert(m.shard.index, i);
    }
    let missing: Vec<String> = (0..m0.shard.count)
        .filter(|k| !by_index.contains_key(k))
        .map(|k| format!("{k}/{}", m0.shard.count))
        .collect();
    if !missing.is_empty() {
        return Err(Error::invalid(format!(
            "incomplete set of parts: shard(s) {} missing (run them, then merge again)",
            missing.join(", ")
        )));
    }
    let csv = m0.run.get("format").and_then(Value::as_str) == Some("csv");
    let mut bytes = Vec::new();
    let mut counts = Counts::default();
    for (pos, &i) in by_index.values().enumerate() {
        let data = std::fs::read(&files[i])
            .map_err(|e| Error::io(format!("reading {}", files[i].display()), e))?;
        // Every CSV part starts with the same header line; keep the first.
        let body = if csv && pos > 0 {
            match data.iter().position(|&b| b == b'\n') {
                Some(nl) => &data[nl + 1..],
                None => &data[..0],
            }
        } else {
            &data[..]
        };
        bytes.extend_from_slice(body);
        let c = mans[i].counts;
        counts.n += c.n;
        counts.flagged += c.flagged;
        counts.skipped += c.skipped;
    }
    if counts.n != m0.total_inputs {
        return Err(Error::invalid(format!(
            "the parts hold {} rows, the run has {} inputs",
            counts.n, m0.total_inputs
        )));
    }
    crate::cache::write_atomic(dest, &bytes)?;
    Ok(Merged {
        parts: files.len(),
        counts,
        total_inputs: m0.total_inputs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_paths() {
        let s = Shard::new(2, 4).unwrap();
        assert_eq!(
            part_path(Path::new("a/rows.csv"), s),
            Path::new("a/rows.2-of-4.csv")
        );
        assert_eq!(part_path(Path::new("rows"), s), Path::new("rows.2-of-4"));
        assert_eq!(
            part_path(Path::new("p/{shard}.jsonl"), s),
            Path::new("p/2.jsonl")
        );
        assert_eq!(
            manifest_path(Path::new("a/rows.csv")),
            Path::new("a/rows.csv.part.json")
        );
    }
}
