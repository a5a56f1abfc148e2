//! Joining the shard directories of one experiment (`libre report merge`): every shard must have
//! run the same experiment, on the same data and weights, with the same libre version, and
//! together hold every cell whole; the cells are then copied into one directory and the report
//! finished there.

use super::{cells, finish, pin_experiment, CellMeta, Experiment, Finished};
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What [`merge_shards`] wrote.
#[derive(Debug)]
pub struct Merged {
    /// The cells of the experiment, all now in the merged directory.
    pub cells: usize,
    /// The finished report of the merged directory.
    pub finished: Finished,
}

/// A directory entry's file name as text.
fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Reads `path`, naming it in the error.
fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))
}

/// Refuses a cell whose rows file is not whole: `expect_scores` rows per image (a shard killed
/// mid-copy, or a file cut short by hand, would otherwise merge as a smaller sample).
fn check_cell_rows(
    cells: &Path,
    id: &str,
    meta: &CellMeta,
    expect_scores: Option<usize>,
) -> Result<()> {
    let Some(k) = expect_scores else {
        return Ok(()); // not a cell of this experiment: never copied
    };
    let f = cells.join(format!("{id}.csv"));
    let file = std::fs::File::open(&f).map_err(|e| Error::bad_file(&f, e.to_string()))?;
    let mut rows = 0usize;
    for r in csv::Reader::from_reader(std::io::BufReader::new(file)).records() {
        r.map_err(|e| Error::bad_file(&f, format!("{e} (a damaged cell; rerun its shard)")))?;
        rows += 1;
    }
    let want = meta.n * k;
    if rows != want {
        return Err(Error::bad_file(
            &f,
            format!(
                "{rows} rows, but the cell's {} images x {k} score(s) make {want}: the file is \
                 truncated or damaged; rerun its shard",
                meta.n
            ),
        ));
    }
    Ok(())
}

/// Joins the shard directories `dirs` of one experiment into `dest` (which may be one of them)
/// and finishes the report there. Refused, before `dest` is written, when the shards ran
/// different experiments, data, weights or libre versions, when two shards hold the same cell
/// with different rows, when a cell's rows are not whole, or when cells are missing (named).
pub fn merge_shards(dirs: &[PathBuf], dest: &Path) -> Result<Merged> {
    let texts: Vec<String> = dirs
        .iter()
        .map(|d| {
            std::fs::read_to_string(d.join("experiment.toml")).map_err(|e| {
                Error::invalid(format!(
                    "{}: not an evaluation directory (experiment.toml: {e})",
                    d.display()
                ))
            })
        })
        .collect::<Result<_>>()?;
    for (d, t) in dirs.iter().zip(&texts).skip(1) {
        if *t != texts[0] {
            return Err(Error::invalid(format!(
                "{} ran a different experiment than {}: refusing to merge",
                d.display(),
                dirs[0].display()
            )));
        }
    }
    let plan = Experiment::parse(&texts[0])?;
    // Rows each cell must hold: one per image and score of its model.
    let scores_of: BTreeMap<String, usize> = cells(&plan)
        .iter()
        .map(|c| (c.id(&plan), plan.models[c.model].scores.len()))
        .collect();
    let mut version: Option<(String, PathBuf)> = None;
    let mut images: Option<(usize, PathBuf)> = None;
    // Content hashes a cell records (weights, data), per model: every shard must agree.
    let mut hashes: BTreeMap<(String, String), (String, PathBuf)> = Default::default();
    let mut sources: BTreeMap<String, PathBuf> = Default::default();
    for d in dirs {
        let cells_dir = d.join("cells");
        let Ok(rd) = std::fs::read_dir(&cells_dir) else {
            continue;
        };
        for e in rd {
            let p = e
                .map_err(|e| Error::io(format!("reading {}", cells_dir.display()), e))?
                .path();
            let name = file_name(&p);
            let Some(id) = name.strip_suffix(".json") else {
                continue;
            };
            let bytes = read(&p)?;
            let meta: CellMeta =
                serde_json::from_slice(&bytes).map_err(|e| Error::bad_file(&p, e.to_string()))?;
            check_cell_rows(&cells_dir, id, &meta, scores_of.get(id).copied())?;
            match &images {
                Some((n, from)) if *n != meta.n => {
                    return Err(Error::invalid(format!(
                        "{} holds {} images but {} holds {n}: shards of different data, \
                         refusing to merge",
                        p.display(),
                        meta.n,
                        from.display()
                    )))
                }
                None => images = Some((meta.n, p.clone())),
                _ => {}
            }
            if let Ok(serde_json::Value::Object(m)) =
                serde_json::from_slice::<serde_json::Value>(&bytes)
            {
                for (k, v) in m.iter().filter(|(k, _)| k.ends_with("sha256")) {
                    let v = v.to_string();
                    match hashes.get(&(meta.model.clone(), k.clone())) {
                        Some((h, from)) if *h != v => {
                            return Err(Error::invalid(format!(
                                "{} and {} record different {k} for model '{}' ({v} vs {h}): \
                                 shards run with different files, refusing to merge",
                                p.display(),
                                from.display(),
                                meta.model
                            )))
                        }
                        Some(_) => {}
                        None => {
                            hashes.insert((meta.model.clone(), k.clone()), (v, p.clone()));
                        }
                    }
                }
            }
            match &version {
                Some((v, from)) if *v != meta.libre_version => {
                    return Err(Error::invalid(format!(
                        "{} was computed by libre {} but {} by {}: refusing to merge",
                        p.display(),
                        meta.libre_version,
                        from.display(),
                        v
                    )))
                }
                None => version = Some((meta.libre_version.clone(), p.clone())),
                _ => {}
            }
            if let Some(prev) = sources.get(id) {
                let same = read(&prev.join(format!("{id}.csv")))?
                    == read(&cells_dir.join(format!("{id}.csv")))?;
                if !same {
                    return Err(Error::invalid(format!(
                        "cell {id} appears in {} and {} with different rows (overlapping shards)",
                        prev.display(),
                        cells_dir.display()
                    )));
                }
            }
            sources.insert(id.to_string(), cells_dir.clone());
        }
    }
    let wanted: Vec<String> = cells(&plan).iter().map(|c| c.id(&plan)).collect();
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|id| !sources.contains_key(*id))
        .map(|s| s.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(Error::invalid(format!(
            "incomplete set of shards: {} cell(s) missing ({}); run the missing shard(s) first",
            missing.len(),
            missing.join(", ")
        )));
    }
    pin_experiment(dest, &texts[0])?;
    let cells_dir = dest.join("cells");
    std::fs::create_dir_all(&cells_dir)
        .map_err(|e| Error::io(format!("creating {}", cells_dir.display()), e))?;
    for id in &wanted {
        let src = &sources[id];
        if *src == cells_dir {
            continue;
        }
        for ext in ["csv", "json"] {
            let bytes = read(&src.join(format!("{id}.{ext}")))?;
            crate::cache::write_atomic(&cells_dir.join(format!("{id}.{ext}")), &bytes)?;
        }
    }
    let finished = finish(&plan, dest)?;
    Ok(Merged {
        cells: wanted.len(),
        finished,
    })
}
