//! `libre evaluate EXPERIMENT.toml --out DIR`: attacks, scores and the detection report in one
//! resumable, shardable run (the work is in `libre::evaluate`).

use super::Output;
use libre::evaluate::{self, experiment::EXAMPLE_MNIST, Experiment, Plan, Shard};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The experiment file (TOML; `libre evaluate --example` prints a complete one).
    #[arg(required_unless_present = "example", value_name = "EXPERIMENT.toml")]
    pub experiment: Option<PathBuf>,
    /// The report directory (cells, tables, index.html, summary.json). Rerunning with the same
    /// directory resumes: finished cells are kept. `{shard}` is replaced by the shard index.
    #[arg(long, required_unless_present = "example")]
    pub out: Option<PathBuf>,
    /// Run only cells i with i % N == K (K/N, K from 0); merge with `libre report merge`.
    /// Without it, a Slurm job array's SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT are used.
    #[arg(long, value_name = "K/N")]
    pub shard: Option<String>,
    /// The shard count N when the index comes from the scheduler: SLURM_ARRAY_TASK_ID as is (so
    /// single tasks can be resubmitted) or a Kubernetes Indexed Job's JOB_COMPLETION_INDEX.
    #[arg(long, value_name = "N")]
    pub shard_count: Option<usize>,
    /// Print the example experiment for MNIST and exit.
    #[arg(long)]
    pub example: bool,
    /// Write into --out even when it holds files that are not an earlier run of this
    /// experiment (files of the same names are replaced).
    #[arg(long)]
    pub force: bool,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
}

struct Bar {
    pb: indicatif::ProgressBar,
    images: usize,
}

impl evaluate::Progress for Bar {
    fn cell_started(&mut self, done: usize, total: usize, id: &str) {
        self.pb.set_prefix(format!("cell {}/{total}", done + 1));
        self.pb.set_message(id.to_string());
        self.pb.set_position(0);
        self.pb.set_length(self.images as u64);
    }
    fn images(&mut self, n: usize) {
        self.pb.inc(n as u64);
    }
}

/// Reads and validates an experiment file, naming the file in errors.
pub fn load_plan(path: &Path) -> anyhow::Result<(String, Plan)> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    let plan = Experiment::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok((text, plan))
}

/// Whether `dir` is an earlier output of `libre evaluate` or `libre report merge` (it holds the
/// experiment.toml they record; [`pin_experiment`] then checks it is the same experiment).
/// Its entries are all "own" then; otherwise none is.
fn foreign_entries(dir: &Path) -> Vec<String> {
    if dir.join("experiment.toml").is_file() {
        return Vec::new();
    }
    super::dir_entries(dir)
}

/// Checks `--out DIR` of `libre evaluate` and `libre report merge` before any work: not a file,
/// and not a directory holding anything but an earlier run unless `force`.
pub fn check_out(dir: &Path, force: bool) -> anyhow::Result<()> {
    super::check_out_dir("--out", dir, &foreign_entries, force)
}

/// Records the experiment in `out`, refusing a directory that holds a different one.
pub fn pin_experiment(out: &Path, text: &str) -> anyhow::Result<()> {
    let f = out.join("experiment.toml");
    if let Ok(old) = std::fs::read_to_string(&f) {
        if old != text {
            anyhow::bail!(
                "{} holds a different experiment ({}); choose another --out",
                out.display(),
                f.display()
            );
        }
        return Ok(());
    }
    std::fs::create_dir_all(out)?;
    libre::cache::write_atomic(&f, text.as_bytes())?;
    Ok(())
}

/// The worst-case robust-detection table of a finished run (empty when it has no attacks).
pub fn worst_case_text(summary: &serde_json::Value) -> String {
    let rows = evaluate::worst_case_table(summary);
    if rows.is_empty() {
        return String::new();
    }
    let w = rows.iter().map(|r| r.0.len()).max().unwrap_or(8).max(8);
    let mut s = format!(
        "Worst case per image over the attacks at each eps (evaded = misclassified and not \
         flagged at the threshold fixed once on clean data):\n{:w$}  {:>6}  {:>8}  {:>17}\n",
        "detector", "eps", "evaded", "robust detection"
    );
    for (d, e, ev, acc, adaptive) in rows {
        let note = if adaptive {
            ""
        } else {
            "  (no adaptive attack on this score)"
        };
        s += &format!("{d:w$}  {e:>6}  {ev:>7.1}%  {acc:>16.1}%{note}\n");
    }
    s
}

/// The AUROC table of a finished run, then the worst-case table.
pub fn auroc_text(summary: &serde_json::Value) -> String {
    auroc_only_text(summary) + &worst_case_text(summary)
}

/// Prints the AUROC table of a finished run.
fn auroc_only_text(summary: &serde_json::Value) -> String {
    let rows = evaluate::auroc_table(summary);
    let mut cols: Vec<String> = vec![];
    let mut dets: Vec<String> = vec![];
    for (d, a, e, _) in &rows {
        let c = format!("{a} {e}");
        if !cols.contains(&c) {
            cols.push(c);
        }
        if !dets.contains(d) {
            dets.push(d.clone());
        }
    }
    let w = dets.iter().map(|d| d.len()).max().unwrap_or(8).max(8);
    let mut s = format!("{:w$}", "AUROC");
    for c in &cols {
        s += &format!("  {c:>14}");
    }
    s.push('\n');
    for d in &dets {
        s += &format!("{d:w$}");
        for c in &cols {
            let v = rows
                .iter()
                .find(|(dd, a, e, _)| dd == d && &format!("{a} {e}") == c)
                .map(|r| format!("{:.3}", r.3))
                .unwrap_or_else(|| "-".into());
            s += &format!("  {v:>14}");
        }
        s.push('\n');
    }
    s
}

/// `{shard}` in `--out` becomes the shard index, so one job-array command line gives every task
/// its own directory.
fn shard_dir(dir: PathBuf, shard: Option<Shard>) -> anyhow::Result<PathBuf> {
    let s = dir.to_string_lossy();
    if !s.contains("{shard}") {
        return Ok(dir);
    }
    match shard {
        Some(sh) => Ok(PathBuf::from(s.replace("{shard}", &sh.index.to_string()))),
        None => anyhow::bail!("--out {s}: `{{shard}}` needs a shard (--shard K/N or a job array)"),
    }
}

pub fn run(args: Args, out: Output) -> anyhow::Result<()> {
    if args.example {
        super::write_stdout(EXAMPLE_MNIST.as_bytes());
        return Ok(());
    }
    let path = args.experiment.expect("clap requires it");
    let shard: Option<Shard> =
        Shard::from_args(args.shard.as_deref(), args.shard_count, &mut |m| {
            out.note(m)
        })?;
    let dir = shard_dir(args.out.expect("clap requires it"), shard)?;
    check_out(&dir, args.force)?;
    // Everything is validated before any work starts.
    let (text, plan) = load_plan(&path)?;
    let device = super::resolve_device(&args.device, &out)?;
    // The data too, before anything is written into --out: a data set without labels is refused
    // here, not after the experiment file was pinned there.
    let data = libre::data::open(&plan.data, None, &mut super::fetch_note(&out))?;
    if data.labels().is_none() {
        anyhow::bail!(
            "{}: evaluation needs labels (data '{}')",
            path.display(),
            plan.data
        );
    }
    let n_images = data.len();
    drop(data);
    pin_experiment(&dir, &text)?;
    let total = evaluate::cells(&plan).len();
    out.note(format!(
        "{}: {} models, {} attack configurations, {} cells{}; samples: {}",
        path.display(),
        plan.models.len(),
        plan.attacks.len(),
        total,
        shard.map(|s| format!(" (shard {s})")).unwrap_or_default(),
        match plan.subset {
            evaluate::experiment::SubsetSpec::All => "all clean vs all adversarial images",
            evaluate::experiment::SubsetSpec::Successful =>
                "successful attacks on correctly classified clean images",
        }
    ));
    let mut bar = Bar {
        pb: out.progress(n_images as u64, "cell"),
        images: n_images,
    };
    let t0 = std::time::Instant::now();
    let ran = evaluate::run_cells(
        &plan,
        &dir,
        shard,
        device,
        &mut super::fetch_note(&out),
        &mut bar,
    )?;
    bar.pb.finish_and_clear();
    out.note(format!(
        "{} cells computed in {:.1} s",
        ran.len(),
        t0.elapsed().as_secs_f64()
    ));
    if shard.is_some_and(|s| s.count > 1) {
        let data = serde_json::json!({ "out": dir, "shard": shard, "cells_run": ran });
        out.result(data, || {
            format!(
                "shard done: {} cells in {}; join the shards with `libre report merge DIR... --out DIR`\n",
                ran.len(),
                dir.display()
            )
        });
        return Ok(());
    }
    let fin = evaluate::finish(&plan, &dir)?;
    let data =
        serde_json::json!({ "out": fin.out, "report": dir.join("index.html"), "cells_run": ran });
    let table = auroc_text(&fin.summary);
    out.result(data, || {
        format!("{table}report: {}\n", dir.join("index.html").display())
    });
    Ok(())
}

/// A directory entry's file name as text.
fn e_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Refuses a cell whose rows file is not whole: `expect_scores` rows per image (a shard killed
/// mid-copy, or a file cut short by hand, would otherwise merge as a smaller sample).
fn check_cell_rows(
    cells: &Path,
    id: &str,
    meta: &evaluate::CellMeta,
    expect_scores: Option<usize>,
) -> anyhow::Result<()> {
    let Some(k) = expect_scores else {
        return Ok(()); // not a cell of this experiment: never copied
    };
    let f = cells.join(format!("{id}.csv"));
    let file = std::fs::File::open(&f).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
    let mut rows = 0usize;
    for r in csv::Reader::from_reader(std::io::BufReader::new(file)).records() {
        r.map_err(|e| anyhow::anyhow!("{}: {e} (a damaged cell; rerun its shard)", f.display()))?;
        rows += 1;
    }
    let want = meta.n * k;
    if rows != want {
        anyhow::bail!(
            "{}: {rows} rows, but the cell's {} images x {k} score(s) make {want}: the file is \
             truncated or damaged; rerun its shard",
            f.display(),
            meta.n
        );
    }
    Ok(())
}

/// `libre report merge DIR... --out DIR`: joins shard directories of one experiment.
pub fn merge(dirs: &[PathBuf], dest: &Path, force: bool, out: Output) -> anyhow::Result<()> {
    if dirs.is_empty() {
        anyhow::bail!("report merge: no shard directories given");
    }
    check_out(dest, force)?;
    let texts: Vec<String> = dirs
        .iter()
        .map(|d| {
            std::fs::read_to_string(d.join("experiment.toml")).map_err(|e| {
                anyhow::anyhow!(
                    "{}: not an evaluation directory (experiment.toml: {e})",
                    d.display()
                )
            })
        })
        .collect::<anyhow::Result<_>>()?;
    for (d, t) in dirs.iter().zip(&texts).skip(1) {
        if *t != texts[0] {
            anyhow::bail!(
                "{} ran a different experiment than {}: refusing to merge",
                d.display(),
                dirs[0].display()
            );
        }
    }
    let plan = Experiment::parse(&texts[0])?;
    // Rows each cell must hold: one per image and score of its model.
    let scores_of: std::collections::BTreeMap<String, usize> = evaluate::cells(&plan)
        .iter()
        .map(|c| (c.id(&plan), plan.models[c.model].scores.len()))
        .collect();
    let mut version: Option<(String, PathBuf)> = None;
    let mut images: Option<(usize, PathBuf)> = None;
    // Content hashes a cell records (weights, data), per model: every shard must agree.
    let mut hashes: std::collections::BTreeMap<(String, String), (String, PathBuf)> =
        Default::default();
    let mut sources: std::collections::BTreeMap<String, PathBuf> = Default::default();
    for d in dirs {
        let cells = d.join("cells");
        let Ok(rd) = std::fs::read_dir(&cells) else {
            continue;
        };
        for e in rd {
            let p = e?.path();
            let name = e_name(&p);
            let Some(id) = name.strip_suffix(".json") else {
                continue;
            };
            let bytes =
                std::fs::read(&p).map_err(|e| anyhow::anyhow!("reading {}: {e}", p.display()))?;
            let meta: evaluate::CellMeta = serde_json::from_slice(&bytes)
                .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
            check_cell_rows(&cells, id, &meta, scores_of.get(id).copied())?;
            match &images {
                Some((n, from)) if *n != meta.n => anyhow::bail!(
                    "{} holds {} images but {} holds {n}: shards of different data, refusing to \
                     merge",
                    p.display(),
                    meta.n,
                    from.display()
                ),
                None => images = Some((meta.n, p.clone())),
                _ => {}
            }
            if let Ok(serde_json::Value::Object(m)) =
                serde_json::from_slice::<serde_json::Value>(&bytes)
            {
                for (k, v) in m.iter().filter(|(k, _)| k.ends_with("sha256")) {
                    let v = v.to_string();
                    match hashes.get(&(meta.model.clone(), k.clone())) {
                        Some((h, from)) if *h != v => anyhow::bail!(
                            "{} and {} record different {k} for model '{}' ({v} vs {h}): shards \
                             run with different files, refusing to merge",
                            p.display(),
                            from.display(),
                            meta.model
                        ),
                        Some(_) => {}
                        None => {
                            hashes.insert((meta.model.clone(), k.clone()), (v, p.clone()));
                        }
                    }
                }
            }
            match &version {
                Some((v, from)) if *v != meta.libre_version => anyhow::bail!(
                    "{} was computed by libre {} but {} by {}: refusing to merge",
                    p.display(),
                    meta.libre_version,
                    from.display(),
                    v
                ),
                None => version = Some((meta.libre_version.clone(), p.clone())),
                _ => {}
            }
            if let Some(prev) = sources.get(id) {
                let same = std::fs::read(prev.join(format!("{id}.csv")))?
                    == std::fs::read(cells.join(format!("{id}.csv")))?;
                if !same {
                    anyhow::bail!(
                        "cell {id} appears in {} and {} with different rows (overlapping shards)",
                        prev.display(),
                        cells.display()
                    );
                }
            }
            sources.insert(id.to_string(), cells.clone());
        }
    }
    let wanted: Vec<String> = evaluate::cells(&plan).iter().map(|c| c.id(&plan)).collect();
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|id| !sources.contains_key(*id))
        .collect();
    if !missing.is_empty() {
        anyhow::bail!(
            "incomplete set of shards: {} cell(s) missing ({}); run the missing shard(s) first",
            missing.len(),
            missing
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    pin_experiment(dest, &texts[0])?;
    let cells_dir = dest.join("cells");
    std::fs::create_dir_all(&cells_dir)?;
    for id in &wanted {
        let src = &sources[id];
        if *src == cells_dir {
            continue;
        }
        for ext in ["csv", "json"] {
            let bytes = std::fs::read(src.join(format!("{id}.{ext}")))?;
            libre::cache::write_atomic(&cells_dir.join(format!("{id}.{ext}")), &bytes)?;
        }
    }
    let fin = evaluate::finish(&plan, dest)?;
    let table = auroc_text(&fin.summary);
    out.result(
        serde_json::json!({ "out": dest, "merged": dirs, "cells": wanted.len() }),
        || {
            format!(
                "{table}merged {} shard directories: {}\n",
                dirs.len(),
                dest.join("index.html").display()
            )
        },
    );
    Ok(())
}
