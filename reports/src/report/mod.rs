//! Report assembly: from the CSV tables of a run directory to a report directory with
//! `index.html` (self-contained: tables plus the figures inlined as SVG), `summary.md`, the CSV
//! tables, `figures/*.svg` (and `*.png` on request) and `manifest.json` (inputs with sizes and
//! SHA-256, options, seed, versions). What the report shows is described in `docs/detection.md`
//! (section on `libre evaluate`).
//!
//! The report is written into a fresh temporary directory beside the destination and renamed
//! into place at the end, so a crash or an error never leaves a half-written report (an older
//! report at the destination survives until the new one is complete).
//!
//! Inputs (schema in [`crate::tables`]): `scores.csv` (detection), `classification.csv`,
//! `reliability.csv`, `mc_curve.csv`; each is optional, but at least one must be present.
//! Detection metrics are computed per (model, attack, eps) on the chosen [`Subset`], which is
//! printed with every detection table.
//!
//! Layout: `load` reads the run, `figures` picks the figures and their data, `metric_tables`
//! formats the metrics, `html` and `markdown` lay out the two documents, `manifest` records the
//! provenance, and `atomic` swaps the finished directory into place; this file holds the
//! options and the top-level build.
mod atomic;
mod figures;
mod html;
mod load;
mod manifest;
mod markdown;
mod metric_tables;
#[cfg(test)]
mod tests;

pub use figures::figures;
pub use html::html_escape;
pub use load::{detection_groups, load_run, DetectionGroup, RunData};
pub use metric_tables::detection_rows;

use crate::bootstrap::BootstrapConfig;
use crate::error::{ReportError, Result};
use crate::tables::{self, Subset};
use metric_tables::TextTable;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// File names of the input tables inside a run directory.
pub const SCORES_CSV: &str = "scores.csv";
pub const CLASSIFICATION_CSV: &str = "classification.csv";
pub const RELIABILITY_CSV: &str = "reliability.csv";
pub const MC_CURVE_CSV: &str = "mc_curve.csv";
/// Written by the report.
pub const DETECTION_CSV: &str = "detection.csv";

/// How to build a report.
#[derive(Debug, Clone, Serialize)]
pub struct ReportOptions {
    pub title: String,
    pub subset: Subset,
    /// Percentile intervals per detection group; `None` for point estimates only.
    pub bootstrap: Option<BootstrapConfig>,
    /// Also write `figures/*.png`.
    pub png: bool,
    /// Who made the report, e.g. "libre 0.1.0 (abc1234)"; goes into the manifest and footer.
    pub generator: String,
}

impl Default for ReportOptions {
    fn default() -> Self {
        ReportOptions {
            title: "LiBRe report".into(),
            subset: Subset::All,
            bootstrap: None,
            png: false,
            generator: format!("libre-reports {}", env!("CARGO_PKG_VERSION")),
        }
    }
}

/// What a written report contains.
#[derive(Debug, Clone, Serialize)]
pub struct ReportSummary {
    pub out_dir: PathBuf,
    pub n_detection_groups: usize,
    pub tables: Vec<String>,
    pub figures: Vec<String>,
    pub rows_dropped_by_subset: usize,
}

/// What index.html and summary.md both present, in display order; each format lays it out
/// in its own way.
struct Page<'a> {
    title: &'a str,
    generator: &'a str,
    /// Table and caption.
    detection: Option<(TextTable, String)>,
    classification: Option<(TextTable, &'static str)>,
    figures: Vec<PageFigure>,
    /// The CSV tables written beside the page.
    tables: &'a [String],
}

/// A rendered figure: inlined into the HTML, linked from the markdown.
struct PageFigure {
    /// File-name stem, also the HTML anchor.
    name: &'static str,
    svg: String,
    /// Relative path of the SVG file inside the report.
    svg_file: String,
    caption: String,
}

fn write_file(path: &Path, contents: impl AsRef<[u8]>) -> Result<()> {
    std::fs::write(path, contents).map_err(|e| ReportError::io(path, e))
}

/// Writes the report files of `run` into the (existing, empty) directory `dir`.
fn write_contents(run: &RunData, dir: &Path, opts: &ReportOptions) -> Result<ReportSummary> {
    let fig_dir = dir.join("figures");
    std::fs::create_dir(&fig_dir).map_err(|e| ReportError::io(&fig_dir, e))?;
    let mut tables_written = Vec::new();
    if !run.detection.is_empty() {
        tables::write_rows(&dir.join(DETECTION_CSV), &detection_rows(run, opts.subset))?;
        tables_written.push(DETECTION_CSV.to_string());
    }
    if !run.classification.is_empty() {
        tables::write_rows(&dir.join(CLASSIFICATION_CSV), &run.classification)?;
        tables_written.push(CLASSIFICATION_CSV.to_string());
    }
    if !run.reliability.is_empty() {
        tables::write_rows(&dir.join(RELIABILITY_CSV), &run.reliability)?;
        tables_written.push(RELIABILITY_CSV.to_string());
    }
    if !run.mc_curve.is_empty() {
        tables::write_rows(&dir.join(MC_CURVE_CSV), &run.mc_curve)?;
        tables_written.push(MC_CURVE_CSV.to_string());
    }

    let mut fig_files = Vec::new();
    let mut page_figures = Vec::new();
    for (fig, caption) in figures(run)? {
        let svg = fig.to_svg()?;
        let svg_file = format!("figures/{}.svg", fig.name());
        write_file(&dir.join(&svg_file), &svg)?;
        fig_files.push(svg_file.clone());
        if opts.png {
            let png = format!("figures/{}.png", fig.name());
            fig.write_png(&dir.join(&png))?;
            fig_files.push(png);
        }
        page_figures.push(PageFigure {
            name: fig.name(),
            svg,
            svg_file,
            caption,
        });
    }

    let page = Page {
        title: &opts.title,
        generator: &opts.generator,
        detection: (!run.detection.is_empty()).then(|| {
            (
                metric_tables::detection_table(run),
                metric_tables::detection_caption(run, opts),
            )
        }),
        classification: (!run.classification.is_empty()).then(|| {
            (
                metric_tables::classification_table(run),
                metric_tables::CLASSIFICATION_CAPTION,
            )
        }),
        figures: page_figures,
        tables: &tables_written,
    };
    write_file(&dir.join("index.html"), html::index_html(&page))?;
    write_file(&dir.join("summary.md"), markdown::summary_md(&page))?;
    write_file(
        &dir.join("manifest.json"),
        manifest::manifest_json(
            &run.inputs,
            opts,
            &tables_written,
            &fig_files,
            run.detection.len(),
        )?,
    )?;
    Ok(ReportSummary {
        out_dir: dir.to_path_buf(),
        n_detection_groups: run.detection.len(),
        tables: tables_written,
        figures: fig_files,
        rows_dropped_by_subset: run.n_dropped,
    })
}

/// Writes the report of `run` to `out_dir` atomically: everything goes to a temporary sibling
/// directory first, which is renamed into place once complete.
pub fn write_report(run: &RunData, out_dir: &Path, opts: &ReportOptions) -> Result<ReportSummary> {
    let mut summary = atomic::replace_dir(out_dir, |tmp| write_contents(run, tmp, opts))?;
    summary.out_dir = out_dir.to_path_buf();
    Ok(summary)
}

/// `libre report RUN_DIR`: reads the run's CSV tables and (re-)renders its report.
pub fn render_run(run_dir: &Path, out_dir: &Path, opts: &ReportOptions) -> Result<ReportSummary> {
    if let Some(b) = &opts.bootstrap {
        b.validate()?;
    }
    let run = load_run(run_dir, opts)?;
    write_report(&run, out_dir, opts)
}
