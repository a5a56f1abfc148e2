//! `libre evaluate EXPERIMENT.toml --out DIR`: attacks, scores and the detection report in one
//! resumable, shardable run (the work is in `libre::evaluate`).

mod tables;

pub use tables::auroc_text;

use crate::cli::args::DeviceArg;
use crate::cli::Output;
use libre::evaluate::{self, experiment::EXAMPLE_MNIST, Experiment, ExperimentPlan, Shard};
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
    #[command(flatten)]
    pub device: DeviceArg,
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
pub fn load_plan(path: &Path) -> anyhow::Result<(String, ExperimentPlan)> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    let plan = Experiment::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok((text, plan))
}

/// Whether `dir` is an earlier output of `libre evaluate` or `libre report merge` (it holds the
/// experiment.toml they record; [`evaluate::pin_experiment`] then checks it is the same experiment).
/// Its entries are all "own" then; otherwise none is.
fn foreign_entries(dir: &Path) -> Vec<String> {
    if dir.join("experiment.toml").is_file() {
        return Vec::new();
    }
    crate::cli::dir_entries(dir)
}

/// Checks `--out DIR` of `libre evaluate` and `libre report merge` before any work: not a file,
/// and not a directory holding anything but an earlier run unless `force`.
pub fn check_out(dir: &Path, force: bool) -> anyhow::Result<()> {
    crate::cli::check_out_dir("--out", dir, &foreign_entries, force)
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
        crate::cli::write_stdout(EXAMPLE_MNIST.as_bytes());
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
    let device = crate::cli::resolve_device(&args.device.device, &out)?;
    // The data too, before anything is written into --out: a data set without labels is refused
    // here, not after the experiment file was pinned there.
    let data = libre::data::open(&plan.data, None, &mut crate::cli::fetch_note(&out))?;
    if data.labels().is_none() {
        anyhow::bail!(
            "{}: evaluation needs labels (data '{}')",
            path.display(),
            plan.data
        );
    }
    let n_images = data.len();
    drop(data);
    evaluate::pin_experiment(&dir, &text)?;
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
        &mut crate::cli::fetch_note(&out),
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

/// `libre report merge DIR... --out DIR`: joins shard directories of one experiment
/// ([`evaluate::merge_shards`]) and prints the AUROC table of the merged report.
pub fn merge(dirs: &[PathBuf], dest: &Path, force: bool, out: Output) -> anyhow::Result<()> {
    if dirs.is_empty() {
        anyhow::bail!("report merge: no shard directories given");
    }
    check_out(dest, force)?;
    let merged = evaluate::merge_shards(dirs, dest)?;
    let table = auroc_text(&merged.finished.summary);
    out.result(
        serde_json::json!({ "out": dest, "merged": dirs, "cells": merged.cells }),
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
