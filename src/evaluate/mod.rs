//! Research evaluation runs (`libre evaluate`): every model attacked white-box (a BNN through its
//! MC-averaged predictive), every score of that model computed on the clean and adversarial
//! images from the same forward, and a report through the reports crate.
//!
//! # Cells
//! The run is cut into cells, one per model for the clean images and one per (model, attack,
//! eps). Each cell is written atomically into `OUT/cells/` (`ID.csv` rows, then `ID.json`, whose
//! presence marks the cell done), so a killed run loses at most the cell in flight and a rerun
//! skips finished cells. A cell's randomness is seeded from the experiment seed and the cell id,
//! so its output does not depend on which other cells ran, in which order or in which shard:
//! `--shard K/N` runs cells `i` with `i % N == K`, and merging the shards' cells gives the same
//! report as one unsharded run.
//!
//! # Output (`OUT/`)
//! `experiment.toml` (the input, verbatim), `cells/`, `scores.csv` (one row per image x model x
//! score x attack x eps; the report's `model` column is `MODEL/SCORE`, with `model_name` and
//! `detector` beside it, and `correct`: the prediction on that row's input is right),
//! `classification.csv` and `reliability.csv` (clean predictions), `timing.csv`, `summary.json`
//! (with each detector's threshold and the robust-detection rows), `robust.csv` (evaded % and
//! robust detection accuracy at thresholds fixed once from clean data, worst case per image;
//! docs/detection.md "Adaptive evaluation"), and the report: `index.html` (led by that table),
//! `summary.md`, `detection.csv`, `figures/`, `manifest.json`.

pub mod experiment;
pub mod merge;

use crate::detect::victim::ModelVictim;
use crate::detect::Detector;
use crate::{Error, Result};
pub use experiment::{Experiment, ExperimentPlan};
use libre_reports::tables::{self as rtables, ClassificationRow, ReliabilityRow};
pub use merge::{merge_shards, Merged};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// One unit of work.
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    pub model: usize,
    /// None: the clean images; Some((attack index, eps)).
    pub attack: Option<(usize, f64)>,
}

impl Cell {
    /// A stable file-name id, e.g. `dnn__clean`, `libre__pgd__0.3`.
    pub fn id(&self, plan: &ExperimentPlan) -> String {
        let m = &plan.models[self.model].name;
        match self.attack {
            None => format!("{m}__clean"),
            Some((a, e)) => format!("{m}__{}__{e}", plan.attacks[a].label),
        }
    }
}

/// Every cell of a plan in a fixed order: per model the clean cell, then attacks x eps.
pub fn cells(plan: &ExperimentPlan) -> Vec<Cell> {
    let mut v = Vec::new();
    for (mi, m) in plan.models.iter().enumerate() {
        v.push(Cell {
            model: mi,
            attack: None,
        });
        for (ai, a) in plan.attacks.iter().enumerate() {
            if a.models.contains(&m.name) {
                for &e in &a.eps {
                    v.push(Cell {
                        model: mi,
                        attack: Some((ai, e)),
                    });
                }
            }
        }
    }
    v
}

pub use crate::jobs::shard::Shard;

/// What a finished cell records beside its rows.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CellMeta {
    pub id: String,
    pub model: String,
    pub attack: Option<String>,
    pub eps: Option<f64>,
    pub n: usize,
    /// Clean accuracy (clean cell) or accuracy on the adversarial images (attack cell).
    pub accuracy: f64,
    pub clean_accuracy: f64,
    pub attack_seconds: f64,
    pub score_seconds: f64,
    pub classification: Option<ClassificationRow>,
    pub reliability: Vec<ReliabilityRow>,
    pub libre_version: String,
    /// The precision the model was attacked and scored at (cells before it: f32).
    #[serde(default)]
    pub precision: crate::runtime::precision::Precision,
    /// Clean cell: the thresholds the detector file calibrated, per score name (the other
    /// scores' thresholds are fixed from the clean rows at the plan's FPR).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub calibrated: std::collections::BTreeMap<String, f64>,
    /// SHA-256 of the weights file the cell ran on: a rerun after the file changed recomputes
    /// the cell instead of keeping results of other weights (cells before it: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights_sha256: Option<String>,
    /// SHA-256 of the images and labels the cell ran on (as decoded), likewise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_sha256: Option<String>,
}

/// SHA-256 (hex) of a data set's decoded images (float32) and labels (int64), in order.
fn dataset_sha256(ds: &crate::data::Dataset, batch: usize) -> Result<String> {
    let mut h = sha2::Sha256::new();
    ds.for_each_batch(batch, &mut |_, x, y| {
        let xs = Vec::<f32>::try_from(x.to_kind(Kind::Float).flatten(0, -1))?;
        let ys = Vec::<i64>::try_from(y.flatten(0, -1))?;
        for v in xs {
            h.update(v.to_le_bytes());
        }
        for v in ys {
            h.update(v.to_le_bytes());
        }
        Ok(())
    })?;
    Ok(format!("{:x}", h.finalize()))
}

/// SHA-256 (hex) of a file, streamed.
fn file_sha256(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path)
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut f, &mut h)
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    Ok(format!("{:x}", h.finalize()))
}

/// Whether the finished cell `id` in `dir` was computed from weights and data with these
/// digests (cells written before digests were recorded count as current).
fn cell_is_current(dir: &Path, id: &str, sha: &str, data_sha: &str) -> bool {
    let p = dir.join(format!("{id}.json"));
    match read_meta(&p) {
        Ok(m) => {
            m.weights_sha256.as_deref().is_none_or(|s| s == sha)
                && m.data_sha256.as_deref().is_none_or(|s| s == data_sha)
        }
        Err(_) => false,
    }
}

fn stable_hash(s: &str) -> u64 {
    // FNV-1a: stable across builds and platforms (std's hasher is not).
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// Observer of progress (the library never prints).
pub trait Progress {
    fn cell_started(&mut self, _done: usize, _total: usize, _id: &str) {}
    fn images(&mut self, _n: usize) {}
}

impl Progress for () {}

/// A model of the plan loaded as a detector, with the thresholds its adaptive attacks know.
struct LoadedDetector {
    det: Detector,
    /// Thresholds fixed so far, per score (see [`threshold_for`]).
    thresholds: HashMap<crate::detect::Score, f64>,
}

/// The detector file's calibrated threshold for `score`, when it calibrated that score at the
/// sample count and precision the model runs at now.
fn calibrated_threshold(det: &Detector, score: crate::detect::Score) -> Option<f64> {
    // A threshold holds at the score, sample count and precision it was calibrated at only: a
    // bf16 model scored against an f32 calibration would shift every score by its rounding.
    det.meta()
        .filter(|m| {
            m.score == score && m.samples == det.samples() && m.precision == det.model().precision()
        })
        .map(|m| m.calibration.threshold)
}

/// The threshold of `score` for model `mi`, fixed once from clean data and used by every attack
/// that knows it: the detector file's calibration ([`calibrated_threshold`]), else the plan's FPR
/// on the scores of the clean images, computed exactly as the clean cell computes them (same
/// batches and seeds), so it equals the threshold the report derives from the clean rows.
fn threshold_for(
    plan: &ExperimentPlan,
    mi: usize,
    det: &Detector,
    ds: &crate::data::Dataset,
    device: Device,
    score: crate::detect::Score,
) -> Result<f64> {
    if let Some(t) = calibrated_threshold(det, score) {
        return Ok(t);
    }
    let m = &plan.models[mi];
    let si = m.scores.iter().position(|&s| s == score).ok_or_else(|| {
        Error::invalid(format!(
            "model '{}': the attacked score '{score}' must be one of its scores (its clean \
                 rows fix the threshold)",
            m.name
        ))
    })?;
    let clean_id = Cell {
        model: mi,
        attack: None,
    }
    .id(plan);
    let seed = plan.seed ^ stable_hash(&clean_id);
    let bs = plan.batch_size;
    let mut vals: Vec<f64> = Vec::new();
    ds.for_each_batch(bs, &mut |start, x, _y| {
        let x = x.to_device(device);
        tch::manual_seed(seed.wrapping_add((start / bs) as u64) as i64);
        let (_, scores) = det.score(&x, &m.scores)?;
        vals.extend(to_vec_f64(&scores[si])?);
        Ok(())
    })?;
    Ok(libre_reports::detection::threshold_for_fpr(
        &vals, plan.fpr,
    )?)
}

/// Runs the plan's cells (all, or one shard's) into `out/cells`, skipping finished ones.
/// Returns the ids of the cells run now.
pub fn run_cells(
    plan: &ExperimentPlan,
    out: &Path,
    shard: Option<Shard>,
    device: Device,
    on_fetch: &mut dyn FnMut(&str),
    progress: &mut dyn Progress,
) -> Result<Vec<String>> {
    let all = cells(plan);
    let mine: Vec<&Cell> = all
        .iter()
        .enumerate()
        .filter(|(i, _)| shard.is_none_or(|s| i % s.count == s.index))
        .map(|(_, c)| c)
        .collect();
    let dir = out.join("cells");
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let ds = crate::data::open(&plan.data, None, on_fetch)?;
    if ds.labels().is_none() {
        return Err(Error::invalid(format!(
            "{}: evaluation needs labels",
            plan.data
        )));
    }
    let data_sha = dataset_sha256(&ds, plan.batch_size)?;
    let mut loaded: HashMap<String, LoadedDetector> = HashMap::new();
    let mut digests: HashMap<String, String> = HashMap::new();
    let mut ran = Vec::new();
    for (k, cell) in mine.iter().enumerate() {
        let id = cell.id(plan);
        progress.cell_started(k, mine.len(), &id);
        let m = &plan.models[cell.model];
        if !digests.contains_key(&m.name) {
            let path = crate::weights::zoo::resolve(&m.weights, on_fetch)?;
            digests.insert(m.name.clone(), file_sha256(&path)?);
        }
        let sha = digests[&m.name].clone();
        if dir.join(format!("{id}.json")).exists() && cell_is_current(&dir, &id, &sha, &data_sha) {
            continue;
        }
        if !loaded.contains_key(&m.name) {
            let path = crate::weights::zoo::resolve(&m.weights, on_fetch)?;
            let mut det = Detector::load(&path, device, Some(m.samples))?;
            det.set_precision(m.precision)?;
            loaded.insert(
                m.name.clone(),
                LoadedDetector {
                    det,
                    thresholds: HashMap::new(),
                },
            );
        }
        // An attack that knows the detector's threshold gets the one fixed from clean data.
        let attacked = cell.attack.and_then(|(ai, _)| {
            let a = &plan.attacks[ai];
            (libre_attacks::ADAPTIVE_NAMES.contains(&a.name.as_str()))
                .then(|| a.adaptive.map(|(_, s)| s.unwrap_or(m.scores[0])))
                .flatten()
        });
        let threshold = match attacked {
            Some(sc) => {
                let l = loaded.get_mut(&m.name).expect("loaded above");
                if !l.thresholds.contains_key(&sc) {
                    let t = threshold_for(plan, cell.model, &l.det, &ds, device, sc)?;
                    l.thresholds.insert(sc, t);
                }
                Some(l.thresholds[&sc])
            }
            None => None,
        };
        let det = &loaded[&m.name].det;
        run_cell(
            plan, cell, &id, det, threshold, &sha, &data_sha, &ds, &dir, device, on_fetch, progress,
        )?;
        ran.push(id);
    }
    Ok(ran)
}

fn to_vec_f64(t: &Tensor) -> Result<Vec<f64>> {
    Ok(Vec::<f64>::try_from(
        t.to_kind(Kind::Double).to_device(Device::Cpu),
    )?)
}

#[allow(clippy::too_many_arguments)]
fn run_cell(
    plan: &ExperimentPlan,
    cell: &Cell,
    id: &str,
    det: &Detector,
    threshold: Option<f64>,
    weights_sha256: &str,
    data_sha256: &str,
    ds: &crate::data::Dataset,
    dir: &Path,
    device: Device,
    on_fetch: &mut dyn FnMut(&str),
    progress: &mut dyn Progress,
) -> Result<()> {
    let m = &plan.models[cell.model];
    let seed = plan.seed ^ stable_hash(id);
    let attack = match cell.attack {
        Some((ai, e)) => {
            let a = &plan.attacks[ai];
            let mut p = a.params.clone();
            p["eps"] = serde_json::json!(e);
            if let Some((c, _)) = a.adaptive {
                p["adaptive_c"] = serde_json::json!(c);
            }
            if let Some(f) = a.step_fraction {
                p["step_size"] = serde_json::json!(e * f);
            }
            if let Some(t) = threshold {
                p["threshold"] = serde_json::json!(t);
            }
            let atk = libre_attacks::by_name(&a.name, &p)
                .map_err(|e| Error::invalid(format!("cell {id}: {e}")))?;
            Some((a, atk))
        }
        None => None,
    };
    let surrogate = match attack.as_ref().and_then(|(a, _)| a.surrogate.as_ref()) {
        Some(s) => {
            let path = crate::weights::zoo::resolve(s, on_fetch)?;
            Some(Detector::load(&path, device, None)?)
        }
        None => None,
    };
    let mut w = csv::Writer::from_writer(Vec::new());
    let csv_err = |e: csv::Error| Error::invalid(format!("cell {id}: {e}"));
    w.write_record([
        "image",
        "model",
        "model_name",
        "detector",
        "attack",
        "eps",
        "label",
        "score",
        "clean_correct",
        "adv_success",
        "correct",
    ])
    .map_err(csv_err)?;
    let (mut attack_s, mut score_s) = (0.0f64, 0.0f64);
    let (mut n, mut correct, mut clean_correct_n) = (0usize, 0usize, 0usize);
    let mut probs_all: Vec<Tensor> = Vec::new();
    let labels = ds.labels().expect("checked").to_vec();
    let bs = plan.batch_size;
    // The next batch decodes on a second thread while this one is attacked and scored.
    ds.for_each_batch(bs, &mut |start, x, y| {
        let bi = start / bs;
        let end = start + x.size()[0] as usize;
        let (x, y) = (x.to_device(device), y.to_device(device));
        let batch_seed = seed.wrapping_add(bi as u64);
        tch::manual_seed(batch_seed as i64);
        let t0 = std::time::Instant::now();
        let (clean_pred, clean_scores) = det.score(&x, &m.scores)?;
        let clean_ok = clean_pred.class.eq_tensor(&y).to_device(Device::Cpu);
        let clean_ok: Vec<bool> = Vec::<bool>::try_from(clean_ok)?;
        let (pred, scores, label) = match &attack {
            None => {
                score_s += t0.elapsed().as_secs_f64();
                probs_all.push(clean_pred.probs.to_device(Device::Cpu));
                (clean_pred, clean_scores, 0)
            }
            Some((a, atk)) => {
                let t1 = std::time::Instant::now();
                let mode = det.mode();
                let score = a.adaptive.map(|(_, s)| s.unwrap_or(m.scores[0]));
                let victim = ModelVictim {
                    model: det.model(),
                    mode,
                    score,
                    classic: det.classic(),
                };
                let sv = surrogate
                    .as_ref()
                    .map(|s| ModelVictim::new(s.model(), s.mode()));
                tch::manual_seed(batch_seed as i64);
                let x_adv = atk
                    .perturb(sv.as_ref().unwrap_or(&victim), &x, &y, batch_seed)
                    .map_err(|e| Error::invalid(format!("cell {id}: {e}")))?;
                attack_s += t1.elapsed().as_secs_f64();
                let t2 = std::time::Instant::now();
                tch::manual_seed(batch_seed as i64 ^ 0x5eed);
                let (p, s) = det.score(&x_adv, &m.scores)?;
                score_s += t2.elapsed().as_secs_f64();
                (p, s, 1)
            }
        };
        let ok: Vec<bool> = Vec::<bool>::try_from(pred.class.eq_tensor(&y).to_device(Device::Cpu))?;
        let vals: Vec<Vec<f64>> = scores.iter().map(to_vec_f64).collect::<Result<_>>()?;
        let attack_name = attack
            .as_ref()
            .map(|(a, _)| a.label.clone())
            .unwrap_or_else(|| "clean".into());
        let eps = cell.attack.map(|(_, e)| e.to_string()).unwrap_or_default();
        for j in 0..(end - start) {
            let img = (start + j).to_string();
            for (si, s) in m.scores.iter().enumerate() {
                let adv_success = if label == 1 {
                    ((clean_ok[j] && !ok[j]) as u8).to_string()
                } else {
                    String::new()
                };
                w.write_record([
                    img.as_str(),
                    &format!("{}/{}", m.name, s),
                    &m.name,
                    s.name(),
                    &attack_name,
                    &eps,
                    &label.to_string(),
                    &format!("{:e}", vals[si][j]),
                    &(clean_ok[j] as u8).to_string(),
                    &adv_success,
                    &(ok[j] as u8).to_string(),
                ])
                .map_err(csv_err)?;
            }
        }
        n += end - start;
        correct += ok.iter().filter(|&&b| b).count();
        clean_correct_n += clean_ok.iter().filter(|&&b| b).count();
        progress.images(end - start);
        Ok(())
    })?;
    let (classification, reliability) = if cell.attack.is_none() {
        let probs = Tensor::cat(&probs_all, 0);
        let cm = crate::accuracy::metrics_of(&probs, &labels[..n])?;
        let (c, r) = rtables::classification_rows(&m.name, &cm);
        (Some(c), r)
    } else {
        (None, vec![])
    };
    let meta = CellMeta {
        id: id.to_string(),
        model: m.name.clone(),
        attack: attack.as_ref().map(|(a, _)| a.label.clone()),
        eps: cell.attack.map(|(_, e)| e),
        n,
        accuracy: correct as f64 / n as f64,
        clean_accuracy: clean_correct_n as f64 / n as f64,
        attack_seconds: attack_s,
        score_seconds: score_s,
        classification,
        reliability,
        libre_version: crate::VERSION.to_string(),
        precision: m.precision,
        calibrated: if cell.attack.is_none() {
            m.scores
                .iter()
                .filter_map(|&s| calibrated_threshold(det, s).map(|t| (s.name().to_string(), t)))
                .collect()
        } else {
            Default::default()
        },
        weights_sha256: Some(weights_sha256.to_string()),
        data_sha256: Some(data_sha256.to_string()),
    };
    let bytes = w
        .into_inner()
        .map_err(|e| Error::invalid(format!("cell {id}: {e}")))?;
    crate::cache::write_atomic(&dir.join(format!("{id}.csv")), &bytes)?;
    let json = serde_json::to_vec_pretty(&meta)?;
    crate::cache::write_atomic(&dir.join(format!("{id}.json")), &json)
}

/// The cells of the plan missing from `out/cells`.
pub fn missing_cells(plan: &ExperimentPlan, out: &Path) -> Vec<String> {
    cells(plan)
        .iter()
        .map(|c| c.id(plan))
        .filter(|id| !out.join("cells").join(format!("{id}.json")).exists())
        .collect()
}

/// Records the experiment's text in `out/experiment.toml`, refusing a directory that holds a
/// different experiment: the cells there would belong to it.
pub fn pin_experiment(out: &Path, text: &str) -> Result<()> {
    let f = out.join("experiment.toml");
    if let Ok(old) = std::fs::read_to_string(&f) {
        if old != text {
            return Err(Error::invalid(format!(
                "{} holds a different experiment ({}); choose another output directory",
                out.display(),
                f.display()
            )));
        }
        return Ok(());
    }
    std::fs::create_dir_all(out)
        .map_err(|e| Error::io(format!("creating {}", out.display()), e))?;
    crate::cache::write_atomic(&f, text.as_bytes())?;
    Ok(())
}

/// What `finish` produced.
#[derive(Debug, Serialize)]
pub struct Finished {
    pub out: PathBuf,
    pub summary: serde_json::Value,
}

fn read_meta(path: &Path) -> Result<CellMeta> {
    let b = std::fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    serde_json::from_slice(&b).map_err(|e| Error::bad_file(path, e.to_string()))
}

/// Assembles the tables from every cell and renders the report into `out` (all cells must be
/// done). The result depends only on the cells' files.
pub fn finish(plan: &ExperimentPlan, out: &Path) -> Result<Finished> {
    let missing = missing_cells(plan, out);
    if !missing.is_empty() {
        return Err(Error::invalid(format!(
            "{}: {} cell(s) not done: {}",
            out.display(),
            missing.len(),
            missing.join(", ")
        )));
    }
    let ids: Vec<String> = cells(plan).iter().map(|c| c.id(plan)).collect();
    let tables = out.join(".tables");
    let _ = std::fs::remove_dir_all(&tables);
    std::fs::create_dir_all(&tables).map_err(|e| Error::io("creating the tables dir", e))?;
    // scores.csv: the cells' rows in cell order.
    let mut scores = Vec::new();
    let (mut classification, mut reliability, mut metas) = (vec![], vec![], vec![]);
    for (i, id) in ids.iter().enumerate() {
        let rows = std::fs::read(out.join("cells").join(format!("{id}.csv")))
            .map_err(|e| Error::io(format!("reading cell {id}"), e))?;
        let body = if i == 0 {
            &rows[..]
        } else {
            let nl = rows
                .iter()
                .position(|&b| b == b'\n')
                .map(|p| p + 1)
                .unwrap_or(rows.len());
            &rows[nl..]
        };
        scores.extend_from_slice(body);
        let meta = read_meta(&out.join("cells").join(format!("{id}.json")))?;
        if let Some(c) = &meta.classification {
            classification.push(c.clone());
            reliability.extend(meta.reliability.iter().cloned());
        }
        metas.push(meta);
    }
    std::fs::write(tables.join("scores.csv"), &scores)
        .map_err(|e| Error::io("writing scores.csv", e))?;
    rtables::write_rows(&tables.join("classification.csv"), &classification)?;
    rtables::write_rows(&tables.join("reliability.csv"), &reliability)?;
    let opts = libre_reports::report::ReportOptions {
        title: plan.title.clone(),
        subset: match plan.subset {
            experiment::SubsetSpec::All => rtables::Subset::All,
            experiment::SubsetSpec::Successful => rtables::Subset::Successful,
        },
        bootstrap: (plan.bootstrap > 0).then_some(libre_reports::bootstrap::BootstrapConfig {
            n_resamples: plan.bootstrap,
            seed: plan.seed,
            level: 0.95,
        }),
        png: false,
        generator: format!("libre {}", crate::VERSION),
    };
    let render = out.join(".render");
    let _ = std::fs::remove_dir_all(&render);
    libre_reports::report::render_run(&tables, &render, &opts)?;
    // timing.csv and summary.json.
    let mut timing =
        String::from("cell,model,attack,eps,n,attack_ms_per_image,score_ms_per_image\n");
    for m in &metas {
        timing += &format!(
            "{},{},{},{},{},{:.4},{:.4}\n",
            m.id,
            m.model,
            m.attack.clone().unwrap_or_else(|| "clean".into()),
            m.eps.map(|e| e.to_string()).unwrap_or_default(),
            m.n,
            1000.0 * m.attack_seconds / m.n as f64,
            1000.0 * m.score_seconds / m.n as f64
        );
    }
    std::fs::write(render.join("timing.csv"), &timing)
        .map_err(|e| Error::io("writing timing.csv", e))?;
    // Timings vary from run to run, so they stay out of summary.json (which shards reproduce
    // exactly) and go into timing.csv and a section of index.html.
    let index = render.join("index.html");
    let html = std::fs::read_to_string(&index).map_err(|e| Error::io("reading index.html", e))?;
    let mut sec = String::from(
        "<h2>Accuracy under attack and time per image</h2>\n<p>Accuracy of each model on the clean \
         images and on each attack's adversarial images (robust accuracy); wall-clock \
         milliseconds per image of each attack (crafting, incl. every forward and backward) and of \
         each detector forward (all of the model's scores from one forward), as measured when the \
         cell ran.</p>\n<table>\n<tr><th>model</th><th>attack</th><th>eps</th><th>images</th>\
         <th>clean accuracy</th><th>accuracy</th><th>attack ms/image</th><th>scoring ms/image</th></tr>\n",
    );
    for m in &metas {
        sec += &format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.2}%</td><td>{:.2}%</td>\
             <td>{:.3}</td><td>{:.3}</td></tr>\n",
            libre_reports::report::html_escape(&m.model),
            libre_reports::report::html_escape(m.attack.as_deref().unwrap_or("clean")),
            m.eps.map(|e| e.to_string()).unwrap_or_default(),
            m.n,
            100.0 * m.clean_accuracy,
            100.0 * m.accuracy,
            1000.0 * m.attack_seconds / m.n as f64,
            1000.0 * m.score_seconds / m.n as f64
        );
    }
    sec += "</table>\n";
    let html = match html.rfind("</body>") {
        Some(i) => format!("{}{sec}{}", &html[..i], &html[i..]),
        None => html + &sec,
    };
    // The robust-detection table leads the report (docs/detection.md, "Adaptive evaluation").
    let (thresholds, robust) = robust_table(plan, &metas, &tables.join("scores.csv"))?;
    rtables::write_rows(&render.join("robust.csv"), &robust)?;
    let lead = robust_html(plan, &thresholds, &robust);
    let html = match html.find("</h1>\n") {
        Some(i) => format!("{}{lead}{}", &html[..i + 6], &html[i + 6..]),
        None => lead + &html,
    };
    std::fs::write(&index, html).map_err(|e| Error::io("writing index.html", e))?;
    let detection: Vec<rtables::DetectionRow> = rtables::read_rows(&render.join("detection.csv"))?;
    let experiment = std::fs::read(out.join("experiment.toml")).unwrap_or_default();
    let summary = serde_json::json!({
        "title": plan.title, "data": plan.data, "seed": plan.seed,
        "experiment_sha256": format!("{:x}", sha2::Sha256::digest(&experiment)),
        "libre_version": crate::VERSION,
        "subset": plan.subset, "bootstrap": plan.bootstrap,
        "models": plan.models, "attacks": plan.attacks,
        "classification": classification,
        "cells": metas.iter().map(|m| serde_json::json!({
            "id": m.id, "model": m.model, "attack": m.attack, "eps": m.eps, "n": m.n,
            "accuracy": m.accuracy, "clean_accuracy": m.clean_accuracy,
        })).collect::<Vec<_>>(),
        "fpr": plan.fpr,
        "thresholds": thresholds,
        "robust_detection": robust,
        "detection": detection,
    });
    let sj = serde_json::to_vec_pretty(&summary)?;
    std::fs::write(render.join("summary.json"), sj)
        .map_err(|e| Error::io("writing summary.json", e))?;
    for f in ["scores.csv", "classification.csv", "reliability.csv"] {
        std::fs::copy(tables.join(f), render.join(f))
            .map_err(|e| Error::io(format!("copying {f}"), e))?;
    }
    // Move every rendered entry into place (each rename atomic; cells are never touched).
    for e in std::fs::read_dir(&render).map_err(|e| Error::io("reading the render dir", e))? {
        let e = e.map_err(|e| Error::io("reading the render dir", e))?;
        let dest = out.join(e.file_name());
        if dest.is_dir() {
            let _ = std::fs::remove_dir_all(&dest);
        }
        std::fs::rename(e.path(), &dest)
            .map_err(|err| Error::io(format!("moving {}", dest.display()), err))?;
    }
    let _ = std::fs::remove_dir_all(&render);
    let _ = std::fs::remove_dir_all(&tables);
    Ok(Finished {
        out: out.to_path_buf(),
        summary,
    })
}

/// The robust-detection table of the cells' rows ([`libre_reports::robust`]): thresholds from
/// the detector files' calibrations recorded in the clean cells, else the plan's FPR of each
/// detector's clean rows.
fn robust_table(
    plan: &ExperimentPlan,
    metas: &[CellMeta],
    scores_csv: &Path,
) -> Result<(
    Vec<libre_reports::robust::Threshold>,
    Vec<libre_reports::robust::RobustRow>,
)> {
    use libre_reports::robust;
    let mut given = HashMap::new();
    for m in metas.iter().filter(|m| m.attack.is_none()) {
        for (score, t) in &m.calibrated {
            given.insert(format!("{}/{score}", m.model), *t);
        }
    }
    let rows = robust::read_scored_inputs(
        scores_csv,
        &robust::InputColumns {
            detector: "model",
            score: "score",
            need_hint: "written by libre evaluate",
            correct_hint: "written by libre evaluate",
            score_hint: "written by libre evaluate",
            detector_hint: "written by libre evaluate",
        },
    )?;
    let thresholds = robust::thresholds(&rows, &given, plan.fpr)?;
    let boot = (plan.bootstrap > 0).then_some(libre_reports::bootstrap::BootstrapConfig {
        n_resamples: plan.bootstrap,
        seed: plan.seed,
        level: 0.95,
    });
    let table = robust::robust_rows(&rows, &thresholds, boot.as_ref())?;
    Ok((thresholds, table))
}

/// The report's lead section: evaded % and robust detection accuracy per detector, worst case
/// first.
fn robust_html(
    plan: &ExperimentPlan,
    thresholds: &[libre_reports::robust::Threshold],
    rows: &[libre_reports::robust::RobustRow],
) -> String {
    use libre_reports::report::html_escape;
    let pct = |v: f64| format!("{v:.1}%");
    let mut s = format!(
        "<h2>Robust detection (misclassified and not flagged)</h2>\n<p>Each detector flags \
         score &ge; its threshold, fixed once from clean data and used for every attack and \
         eps (calibrated in the detector file, or at FPR {} of its clean rows). An attacked \
         image is <b>evaded</b> when its adversarial input is misclassified and not flagged; \
         robust detection accuracy = 100% &minus; evaded, over all attacked images. The \
         <b>worst case</b> takes, per image, every attack at that eps and the clean image: \
         evaded when any of them evaded. {}</p>\n<table>\n<tr><th>detector</th><th>attack</th>\
         <th>eps</th><th>images</th><th>threshold</th><th>attack success</th><th>flagged</th>\
         <th>evaded</th><th>robust detection accuracy</th></tr>\n",
        plan.fpr,
        if plan.bootstrap > 0 {
            "Brackets: 95% bootstrap interval over images."
        } else {
            ""
        }
    );
    // Worst case first within each detector, then clean, then the attacks.
    let mut ordered: Vec<&libre_reports::robust::RobustRow> = Vec::new();
    for t in thresholds {
        let mine: Vec<_> = rows.iter().filter(|r| r.detector == t.detector).collect();
        ordered.extend(
            mine.iter()
                .filter(|r| r.attack == libre_reports::robust::WORST_CASE),
        );
        ordered.extend(
            mine.iter()
                .filter(|r| r.attack != libre_reports::robust::WORST_CASE),
        );
    }
    for r in ordered {
        let ci = match (r.evaded_lo, r.evaded_hi) {
            (Some(lo), Some(hi)) => format!(" [{lo:.1}, {hi:.1}]"),
            _ => String::new(),
        };
        let strong = r.attack == libre_reports::robust::WORST_CASE;
        let (b0, b1) = if strong { ("<b>", "</b>") } else { ("", "") };
        s += &format!(
            "<tr><td>{}</td><td>{b0}{}{b1}</td><td>{}</td><td>{}</td><td>{:.4e} ({})</td>\
             <td>{}</td><td>{}</td><td>{b0}{}{ci}{b1}</td><td>{b0}{}{b1}</td></tr>\n",
            html_escape(&r.detector),
            html_escape(&r.attack),
            html_escape(&r.eps),
            r.n,
            r.threshold,
            html_escape(&r.threshold_source),
            pct(r.attack_success),
            r.flagged.map(pct).unwrap_or_default(),
            pct(r.evaded),
            pct(r.robust_detection_accuracy),
        );
    }
    s + "</table>\n"
}

/// Rows of the worst-case table `(detector, eps, evaded %, robust detection accuracy %,
/// attacked adaptively)` from a summary, for printing. The last field is false for a detector
/// (model/score) that no attack of the experiment pushed down: its worst case is then only that
/// of attacks aimed elsewhere, not an adaptive evaluation of it.
pub fn worst_case_table(summary: &serde_json::Value) -> Vec<(String, String, f64, f64, bool)> {
    let mut targeted: Vec<String> = Vec::new();
    for a in summary["attacks"].as_array().into_iter().flatten() {
        let Some(ad) = a["adaptive"].as_array() else {
            continue;
        };
        // Only an attack with a detector term pushes the score down (pgd-restarts merely knows
        // the threshold).
        let pushes = matches!(a["name"].as_str(), Some("selective" | "orthogonal"))
            || ad.first().and_then(|c| c.as_f64()).is_some_and(|c| c > 0.0);
        if !pushes {
            continue;
        }
        for m in a["models"].as_array().into_iter().flatten() {
            let m = m.as_str().unwrap_or("");
            let first = summary["models"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|x| x["name"] == m)
                .and_then(|x| x["scores"][0].as_str())
                .unwrap_or("");
            let score = ad.get(1).and_then(|s| s.as_str()).unwrap_or(first);
            targeted.push(format!("{m}/{score}"));
        }
    }
    summary["robust_detection"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .filter(|r| r["attack"] == libre_reports::robust::WORST_CASE)
                .map(|r| {
                    (
                        r["detector"].as_str().unwrap_or("").to_string(),
                        r["eps"].as_str().unwrap_or("").to_string(),
                        r["evaded"].as_f64().unwrap_or(f64::NAN),
                        r["robust_detection_accuracy"].as_f64().unwrap_or(f64::NAN),
                        targeted.iter().any(|t| r["detector"] == t.as_str()),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Rows of the AUROC table `(model/score, attack, eps, auroc)` from a summary, for printing.
pub fn auroc_table(summary: &serde_json::Value) -> Vec<(String, String, String, f64)> {
    summary["detection"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|r| {
                    (
                        r["model"].as_str().unwrap_or("").to_string(),
                        r["attack"].as_str().unwrap_or("").to_string(),
                        r["eps"].as_str().unwrap_or("").to_string(),
                        r["auroc"].as_f64().unwrap_or(f64::NAN),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod worst_case_tests {
    use super::worst_case_table;

    #[test]
    fn only_attacks_that_push_a_score_down_count_as_adaptive_for_it() {
        let summary = serde_json::json!({
            "models": [{"name": "m", "scores": ["feature-variance", "msp"]}],
            "attacks": [
                {"name": "pgd-restarts", "adaptive": [0.0, null], "models": ["m"]},
                {"name": "mimicry", "adaptive": [0.0, "msp"], "models": ["m"]},
                {"name": "fgsm", "adaptive": null, "models": ["m"]},
            ],
            "robust_detection": [
                {"detector": "m/feature-variance", "attack": "worst-case", "eps": "0.3",
                 "evaded": 10.0, "robust_detection_accuracy": 90.0},
                {"detector": "m/msp", "attack": "worst-case", "eps": "0.3",
                 "evaded": 20.0, "robust_detection_accuracy": 80.0},
            ],
        });
        let t = worst_case_table(&summary);
        assert_eq!(
            (t[0].4, t[1].4),
            (false, false),
            "C = 0 pushes nothing down"
        );
        let mut s2 = summary.clone();
        s2["attacks"][0] = serde_json::json!({"name": "selective", "adaptive": [0.0, null],
                                              "models": ["m"]});
        s2["attacks"][1]["adaptive"][0] = serde_json::json!(10.0);
        let t = worst_case_table(&s2);
        assert_eq!((t[0].4, t[1].4), (true, true));
        assert_eq!((t[1].2, t[1].3), (20.0, 80.0));
    }
}
