//! `libre report RUN_DIR`: (re-)render a report directory from the CSV tables of a run
//! (docs/design.md section 9; the `libre-reports` crate does the work, see its `tables` module
//! for the CSV schema). The report is written to a temporary directory and renamed into place.
use super::Output;
use libre_reports::bootstrap::BootstrapConfig;
use libre_reports::report::{render_run, ReportOptions};
use libre_reports::tables::Subset;
use serde_json::json;
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    cmd: Option<ReportCmd>,
    /// Run directory with scores.csv, classification.csv, reliability.csv and/or mc_curve.csv.
    #[arg(value_name = "RUN_DIR", required = true)]
    run_dir: Option<PathBuf>,
    /// Where to write the report [default: RUN_DIR/report]. The directory is replaced as a
    /// whole: it must not be RUN_DIR or hold it, and an existing one must be an earlier report
    /// (see --force).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Replace --out even when it holds files that are not an earlier report (they are
    /// deleted).
    #[arg(long)]
    force: bool,
    /// Which rows count for detection: `all`, or `successful` (successful attacks on correctly
    /// classified clean inputs; needs the columns clean_correct and adv_success).
    #[arg(long, value_name = "SUBSET", default_value = "all",
          value_parser = ["all", "successful"])]
    subset: String,
    /// Bootstrap 95% intervals of the detection metrics from N resamples.
    #[arg(long, value_name = "N")]
    bootstrap: Option<usize>,
    /// Seed of the bootstrap.
    #[arg(long, value_name = "N", default_value_t = 0)]
    seed: u64,
    /// Also write PNG versions of the figures.
    #[arg(long)]
    png: bool,
    /// Title of the report.
    #[arg(long, default_value = "LiBRe report")]
    title: String,
}

#[derive(clap::Subcommand, Debug)]
enum ReportCmd {
    /// Join the shard directories of one `libre evaluate` experiment into one report (refuses
    /// different experiments or versions, overlapping shards with different rows, and missing
    /// cells, naming them).
    Merge {
        /// The shard directories (each written by `libre evaluate --shard K/N`).
        #[arg(required = true, value_name = "DIR")]
        dirs: Vec<PathBuf>,
        /// The merged report directory: new, empty, or an earlier output of this experiment
        /// (one of the shard directories too); see --force.
        #[arg(long)]
        out: PathBuf,
        /// Write into --out even when it holds files that are not an earlier output of this
        /// experiment (files of the same names are replaced).
        #[arg(long)]
        force: bool,
    },
}

/// The entries of `dir` that are not part of an earlier report: everything, unless a
/// `manifest.json` written by the reports crate is there; then what it does not list (its tables
/// and figures, index.html, summary.md). A report replaces its directory whole, so these would
/// be deleted.
fn foreign_entries(dir: &Path) -> Vec<String> {
    let all = super::dir_entries(dir);
    let manifest = std::fs::read(dir.join("manifest.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .filter(|m| m.get("reports_version").is_some());
    let Some(m) = manifest else {
        return all;
    };
    let mut own: Vec<String> = ["manifest.json", "index.html", "summary.md", "figures"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for key in ["tables", "figures"] {
        for f in m[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str())
        {
            if let Some(first) = Path::new(f).components().next() {
                own.push(first.as_os_str().to_string_lossy().into_owned());
            }
        }
    }
    all.into_iter().filter(|n| !own.contains(n)).collect()
}

pub fn run(args: Args, out: Output) -> anyhow::Result<()> {
    if let Some(ReportCmd::Merge {
        dirs,
        out: dest,
        force,
    }) = &args.cmd
    {
        return super::evaluate::merge(dirs, dest, *force, out);
    }
    // clap requires RUN_DIR unless a subcommand (merge) ran above.
    let Some(run_dir) = args.run_dir.clone() else {
        anyhow::bail!("RUN_DIR is required");
    };
    let subset: Subset = args.subset.parse()?;
    let opts = ReportOptions {
        title: args.title,
        subset,
        bootstrap: args.bootstrap.map(|n| BootstrapConfig {
            n_resamples: n,
            seed: args.seed,
            level: 0.95,
        }),
        png: args.png,
        generator: format!("libre {}", libre::VERSION),
    };
    let dest = args.out.unwrap_or_else(|| run_dir.join("report"));
    // The report replaces `dest` whole: never the run it reads, and never files it did not
    // write unless --force.
    super::refuse_output_over_inputs("--out", &dest, &[("RUN_DIR", &run_dir)])?;
    super::check_out_dir("--out", &dest, &foreign_entries, args.force)?;
    out.note(format!(
        "rendering {} -> {} (samples: {})",
        run_dir.display(),
        dest.display(),
        subset.describe()
    ));
    let summary = render_run(&run_dir, &dest, &opts)?;
    let data = json!({
        "out_dir": summary.out_dir,
        "index": summary.out_dir.join("index.html"),
        "subset": subset,
        "detection_groups": summary.n_detection_groups,
        "tables": summary.tables,
        "figures": summary.figures,
        "rows_dropped_by_subset": summary.rows_dropped_by_subset,
    });
    out.result(data, || {
        format!(
            "report written to {}\n  {} detection groups (samples: {})\n  tables: {}\n  \
             figures: {}\n",
            summary.out_dir.join("index.html").display(),
            summary.n_detection_groups,
            subset.describe(),
            summary.tables.join(", "),
            summary.figures.join(", ")
        )
    });
    Ok(())
}
