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

/// Prints the AUROC table of a finished run.
pub fn auroc_text(summary: &serde_json::Value) -> String {
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
        print!("{EXAMPLE_MNIST}");
        return Ok(());
    }
    let path = args.experiment.expect("clap requires it");
    let shard: Option<Shard> =
        Shard::from_args(args.shard.as_deref(), args.shard_count, &mut |m| {
            out.note(m)
        })?;
    let dir = shard_dir(args.out.expect("clap requires it"), shard)?;
    // Everything is validated before any work starts.
    let (text, plan) = load_plan(&path)?;
    let device = super::resolve_device(&args.device, &out)?;
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
    let n_images = libre::data::open(&plan.data, None, &mut super::fetch_note(&out))?.len();
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

/// `libre report merge DIR... --out DIR`: joins shard directories of one experiment.
pub fn merge(dirs: &[PathBuf], dest: &Path, out: Output) -> anyhow::Result<()> {
    if dirs.is_empty() {
        anyhow::bail!("report merge: no shard directories given");
    }
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
    let mut version: Option<(String, PathBuf)> = None;
    let mut sources: std::collections::BTreeMap<String, PathBuf> = Default::default();
    for d in dirs {
        let cells = d.join("cells");
        let Ok(rd) = std::fs::read_dir(&cells) else {
            continue;
        };
        for e in rd {
            let p = e?.path();
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            let Some(id) = name.strip_suffix(".json") else {
                continue;
            };
            let meta: evaluate::CellMeta = serde_json::from_slice(&std::fs::read(&p)?)
                .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
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
