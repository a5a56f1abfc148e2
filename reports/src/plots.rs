//! The report's figures: one function per figure, generic over the plotters backend, plus SVG
//! (default) and PNG writers.
//!
//! Text needs a font even on headless machines: plotters' default font path goes through
//! fontconfig and breaks there (plotters issues #310, #538), so the crate embeds DejaVu Sans
//! (`assets/DejaVuSans.ttf`, Bitstream Vera / DejaVu licence, see `assets/DejaVuSans-LICENSE.txt`)
//! and registers it as `sans-serif` with plotters' `ab_glyph` backend before the first drawing.
//! SVG output keeps text as `<text>` elements, which the browser renders with its own sans-serif.
//!
//! Figures:
//! * [`draw_roc_panels`]: ROC curves, DNN vs BNN, one panel per attack;
//! * [`draw_score_histograms`]: score densities, clean vs adversarial, models side by side;
//! * [`draw_reliability`]: reliability diagrams, one panel per model;
//! * [`draw_mc_curve`]: accuracy and NLL versus the number of MC samples;
//! * [`draw_auroc_vs_eps`]: AUROC versus the attack radius, one panel per attack.
//!
//! [`Figure`] bundles a figure's data so that it can be written as SVG or PNG.
use crate::classification::ReliabilityBin;
use crate::detection::RocCurve;
use crate::error::{ReportError, Result};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::ops::Range;
use std::path::Path;
use std::sync::Once;

/// Pixel size of one panel; figures are grids of panels.
pub const PANEL: (u32, u32) = (420, 340);

static FONT: Once = Once::new();

/// Registers the embedded DejaVu Sans as plotters' `sans-serif` (idempotent).
pub fn ensure_font() {
    FONT.call_once(|| {
        let bytes: &'static [u8] = include_bytes!("../assets/DejaVuSans.ttf");
        // The font is a fixed, known-good file: failing to parse it is a build defect.
        if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_err() {
            panic!("the embedded assets/DejaVuSans.ttf is not a valid font");
        }
    });
}

fn plot_err<E: std::fmt::Display>(figure: &str) -> impl Fn(E) -> ReportError + '_ {
    move |e| ReportError::Plot {
        figure: figure.into(),
        message: e.to_string(),
    }
}

/// A stable colour per model name: DNN red, BNN blue, anything else from the 99-colour palette.
pub fn model_color(model: &str, index: usize) -> RGBColor {
    match model.to_ascii_lowercase().as_str() {
        "dnn" => RGBColor(214, 39, 40),
        "bnn" => RGBColor(31, 119, 180),
        _ => {
            let c = Palette99::pick(index + 2).to_rgba();
            RGBColor(c.0, c.1, c.2)
        }
    }
}

const CLEAN_COLOR: RGBColor = RGBColor(44, 160, 44);
const ADV_COLOR: RGBColor = RGBColor(214, 39, 40);

fn grid<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    n: usize,
    cols: usize,
) -> Vec<DrawingArea<DB, Shift>> {
    let cols = cols.max(1);
    let rows = n.div_ceil(cols).max(1);
    root.split_evenly((rows, cols))
}

/// Starts a figure of `n` panels laid out `cols` to a row on a white background; `items` (the
/// figure's data) must not be empty.
fn start<DB: DrawingBackend, T>(
    figure: &str,
    root: &DrawingArea<DB, Shift>,
    items: &[T],
    n: usize,
    cols: usize,
) -> Result<Vec<DrawingArea<DB, Shift>>> {
    if items.is_empty() {
        return Err(ReportError::Empty {
            what: format!("figure `{figure}` has no panels"),
        });
    }
    root.fill(&WHITE).map_err(plot_err(figure))?;
    Ok(grid(root, n, cols))
}

/// A panel's chart: both axes are `f64`.
type Chart<'a, DB> = ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// What sets one figure's panels apart; the rest (font, margins, x label area, legend box)
/// is the same in every figure.
struct PanelStyle<'a> {
    x_desc: &'a str,
    y_desc: &'a str,
    title_size: u32,
    /// Number of tick labels on each axis.
    x_labels: usize,
    y_labels: usize,
    /// Room for the y tick labels, wider for long numbers.
    y_label_area: u32,
    /// Tick label format on the x axis (plotters' default when `None`).
    x_format: Option<fn(&f64) -> String>,
    legend_at: SeriesLabelPosition,
    legend_size: u32,
}

impl Default for PanelStyle<'_> {
    fn default() -> Self {
        PanelStyle {
            x_desc: "",
            y_desc: "",
            title_size: 18,
            x_labels: 6,
            y_labels: 6,
            y_label_area: 44,
            x_format: None,
            legend_at: SeriesLabelPosition::LowerRight,
            legend_size: 13,
        }
    }
}

impl PanelStyle<'_> {
    /// A titled chart over `x` by `y` on `area`, with its mesh and axis descriptions drawn.
    fn chart<'a, DB: DrawingBackend>(
        &self,
        figure: &str,
        area: &'a DrawingArea<DB, Shift>,
        title: &str,
        x: Range<f64>,
        y: Range<f64>,
    ) -> Result<Chart<'a, DB>> {
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", self.title_size))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(self.y_label_area)
            .build_cartesian_2d(x, y)
            .map_err(plot_err(figure))?;
        let mut mesh = chart.configure_mesh();
        mesh.x_desc(self.x_desc)
            .y_desc(self.y_desc)
            .x_labels(self.x_labels)
            .y_labels(self.y_labels);
        if let Some(f) = &self.x_format {
            mesh.x_label_formatter(f);
        }
        mesh.draw().map_err(plot_err(figure))?;
        Ok(chart)
    }

    /// Draws the legend of the series drawn so far (call it last).
    fn legend<'a, DB: DrawingBackend + 'a>(
        &self,
        figure: &str,
        chart: &mut Chart<'a, DB>,
    ) -> Result<()> {
        chart
            .configure_series_labels()
            .position(self.legend_at.clone())
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .label_font(("sans-serif", self.legend_size))
            .draw()
            .map_err(plot_err(figure))
    }
}

/// One model's ROC curve in a panel.
#[derive(Debug, Clone)]
pub struct RocSeries {
    pub model: String,
    /// Thin it first ([`RocCurve::thin`]); a few hundred points are plenty.
    pub curve: RocCurve,
    pub auroc: f64,
}

/// One panel of [`draw_roc_panels`] (usually one attack at one eps).
#[derive(Debug, Clone)]
pub struct RocPanel {
    pub title: String,
    pub series: Vec<RocSeries>,
}

/// ROC curves, one panel per attack, one line per model (legend shows the AUROC).
pub fn draw_roc_panels<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    panels: &[RocPanel],
    cols: usize,
) -> Result<()> {
    const FIG: &str = "roc";
    let style = PanelStyle {
        x_desc: "false positive rate (clean flagged)",
        y_desc: "true positive rate",
        ..Default::default()
    };
    for (area, panel) in start(FIG, root, panels, panels.len(), cols)?
        .iter()
        .zip(panels)
    {
        let mut chart = style.chart(FIG, area, &panel.title, 0f64..1f64, 0f64..1.0001f64)?;
        chart
            .draw_series(LineSeries::new([(0.0, 0.0), (1.0, 1.0)], BLACK.mix(0.3)))
            .map_err(plot_err(FIG))?;
        for (i, s) in panel.series.iter().enumerate() {
            let color = model_color(&s.model, i);
            let pts = s.curve.fpr.iter().copied().zip(s.curve.tpr.iter().copied());
            chart
                .draw_series(LineSeries::new(pts, color.stroke_width(2)))
                .map_err(plot_err(FIG))?
                .label(format!("{} (AUROC {:.4})", s.model.to_uppercase(), s.auroc))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
        }
        style.legend(FIG, &mut chart)?;
    }
    Ok(())
}

/// One panel of [`draw_score_histograms`]: the scores of one model on one attack.
#[derive(Debug, Clone)]
pub struct HistPanel {
    pub title: String,
    pub clean: Vec<f64>,
    pub adversarial: Vec<f64>,
}

/// Fraction of `values` in each of `n` equal bins over `[lo, hi]`.
fn histogram(values: &[f64], lo: f64, hi: f64, n: usize) -> Vec<f64> {
    let mut h = vec![0.0; n];
    let width = (hi - lo).max(f64::MIN_POSITIVE);
    for &v in values {
        let b = (((v - lo) / width) * n as f64).floor() as isize;
        h[b.clamp(0, n as isize - 1) as usize] += 1.0;
    }
    let total = values.len().max(1) as f64;
    h.iter_mut().for_each(|x| *x /= total);
    h
}

/// Score histograms (fraction per bin), clean vs adversarial overlaid; lay panels out with
/// `cols` = number of models so that DNN and BNN sit side by side for each attack.
pub fn draw_score_histograms<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    panels: &[HistPanel],
    cols: usize,
) -> Result<()> {
    const FIG: &str = "score histograms";
    const BINS: usize = 40;
    let style = PanelStyle {
        x_desc: "detection score",
        y_desc: "fraction of samples",
        title_size: 16,
        x_labels: 5,
        y_labels: 5,
        y_label_area: 50,
        legend_at: SeriesLabelPosition::UpperRight,
        legend_size: 12,
        ..Default::default()
    };
    for (area, panel) in start(FIG, root, panels, panels.len(), cols)?
        .iter()
        .zip(panels)
    {
        let all = panel.clean.iter().chain(&panel.adversarial);
        let (mut lo, mut hi) = all.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
        if !lo.is_finite() {
            (lo, hi) = (0.0, 1.0);
        }
        if hi - lo < 1e-12 {
            // All scores equal: widen so the single bar is visible.
            lo -= 0.5;
            hi += 0.5;
        }
        let hc = histogram(&panel.clean, lo, hi, BINS);
        let ha = histogram(&panel.adversarial, lo, hi, BINS);
        let ymax = hc
            .iter()
            .chain(&ha)
            .fold(0.0f64, |a, &b| a.max(b))
            .max(1e-3)
            * 1.1;
        let mut chart = style.chart(FIG, area, &panel.title, lo..hi, 0f64..ymax)?;
        let w = (hi - lo) / BINS as f64;
        for (h, color, name) in [
            (&hc, CLEAN_COLOR, format!("clean (n={})", panel.clean.len())),
            (
                &ha,
                ADV_COLOR,
                format!("adversarial (n={})", panel.adversarial.len()),
            ),
        ] {
            chart
                .draw_series(
                    h.iter()
                        .enumerate()
                        .filter(|(_, &v)| v > 0.0)
                        .map(|(b, &v)| {
                            let x0 = lo + b as f64 * w;
                            Rectangle::new([(x0, 0.0), (x0 + w, v)], color.mix(0.45).filled())
                        }),
                )
                .map_err(plot_err(FIG))?
                .label(name)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 14, y + 5)], color.mix(0.45).filled())
                });
        }
        style.legend(FIG, &mut chart)?;
    }
    Ok(())
}

/// One model's reliability diagram.
#[derive(Debug, Clone)]
pub struct ReliabilitySeries {
    pub model: String,
    pub bins: Vec<ReliabilityBin>,
    pub ece: f64,
}

/// Reliability diagrams, one panel per model: accuracy per confidence bin against the diagonal
/// of perfect calibration; empty bins are left blank.
pub fn draw_reliability<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    models: &[ReliabilitySeries],
) -> Result<()> {
    const FIG: &str = "reliability";
    let style = PanelStyle {
        x_desc: "confidence (max probability)",
        y_desc: "accuracy",
        legend_at: SeriesLabelPosition::UpperLeft,
        legend_size: 12,
        ..Default::default()
    };
    for (i, (area, m)) in start(FIG, root, models, models.len(), models.len())?
        .iter()
        .zip(models)
        .enumerate()
    {
        let color = model_color(&m.model, i);
        let title = format!("{} (ECE {:.4})", m.model.to_uppercase(), m.ece);
        let mut chart = style.chart(FIG, area, &title, 0f64..1f64, 0f64..1f64)?;
        chart
            .draw_series(m.bins.iter().filter(|b| b.count > 0).map(|b| {
                Rectangle::new([(b.lo, 0.0), (b.hi, b.accuracy)], color.mix(0.6).filled())
            }))
            .map_err(plot_err(FIG))?
            .label("accuracy")
            .legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 14, y + 5)], color.mix(0.6).filled())
            });
        chart
            .draw_series(
                m.bins.iter().filter(|b| b.count > 0).map(|b| {
                    Rectangle::new([(b.lo, 0.0), (b.hi, b.accuracy)], BLACK.stroke_width(1))
                }),
            )
            .map_err(plot_err(FIG))?;
        chart
            .draw_series(
                m.bins
                    .iter()
                    .filter(|b| b.count > 0)
                    .map(|b| Circle::new((0.5 * (b.lo + b.hi), b.confidence), 3, BLACK.filled())),
            )
            .map_err(plot_err(FIG))?
            .label("mean confidence")
            .legend(|(x, y)| Circle::new((x + 7, y), 3, BLACK.filled()));
        chart
            .draw_series(LineSeries::new([(0.0, 0.0), (1.0, 1.0)], BLACK.mix(0.5)))
            .map_err(plot_err(FIG))?;
        style.legend(FIG, &mut chart)?;
    }
    Ok(())
}

/// Accuracy and NLL of one model at increasing numbers of MC samples.
#[derive(Debug, Clone)]
pub struct McSeries {
    pub model: String,
    /// `(n_samples, top1, nll)`, sorted by `n_samples`.
    pub points: Vec<(usize, f64, f64)>,
}

fn padded(lo: f64, hi: f64) -> std::ops::Range<f64> {
    let pad = ((hi - lo) * 0.08).max(1e-3);
    (lo - pad)..(hi + pad)
}

/// Two panels: top-1 accuracy and NLL versus the number of MC samples S, one line per model.
pub fn draw_mc_curve<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    series: &[McSeries],
) -> Result<()> {
    const FIG: &str = "mc curve";
    let areas = start(FIG, root, series, 2, 2)?;
    let s_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .max()
        .unwrap_or(1)
        .max(2);
    for (k, (area, (name, pick))) in areas
        .iter()
        .zip([
            (
                "top-1 accuracy",
                (|p: &(usize, f64, f64)| p.1) as fn(&_) -> f64,
            ),
            ("NLL", |p: &(usize, f64, f64)| p.2),
        ])
        .enumerate()
    {
        let vals: Vec<f64> = series
            .iter()
            .flat_map(|s| s.points.iter().map(pick))
            .collect();
        let (lo, hi) = vals
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
                (a.min(v), b.max(v))
            });
        let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
        let style = PanelStyle {
            x_desc: "number of MC samples S",
            y_desc: name,
            x_labels: 8,
            y_label_area: 56,
            // S is a count: no decimals on its axis.
            x_format: Some(|x| format!("{x:.0}")),
            // Accuracy rises and NLL falls with S: keep the legend off the curves' ends.
            legend_at: if k == 0 {
                SeriesLabelPosition::LowerRight
            } else {
                SeriesLabelPosition::UpperRight
            },
            ..Default::default()
        };
        let mut chart = style.chart(
            FIG,
            area,
            &format!("{name} vs MC samples"),
            0.5f64..(s_max as f64 + 0.5),
            padded(lo, hi),
        )?;
        for (i, s) in series.iter().enumerate() {
            let color = model_color(&s.model, i);
            let mut pts: Vec<(f64, f64)> = s.points.iter().map(|p| (p.0 as f64, pick(p))).collect();
            let mut label = s.model.to_uppercase();
            let line = if let [(x, y)] = pts[..] {
                // A single evaluation (the deterministic DNN): a reference level across S.
                label = format!("{label} (S = {x})");
                vec![(0.5, y), (s_max as f64 + 0.5, y)]
            } else {
                pts.clone()
            };
            if line.len() == 2 && pts.len() == 1 {
                pts.clear();
            }
            chart
                .draw_series(LineSeries::new(line, color.stroke_width(2)))
                .map_err(plot_err(FIG))?
                .label(label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
            chart
                .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
                .map_err(plot_err(FIG))?;
        }
        style.legend(FIG, &mut chart)?;
    }
    Ok(())
}

/// One panel of [`draw_auroc_vs_eps`]: an attack, with `(eps, auroc)` points per model.
#[derive(Debug, Clone)]
pub struct EpsPanel {
    pub title: String,
    pub series: Vec<(String, Vec<(f64, f64)>)>,
}

/// AUROC versus attack radius, one panel per attack, one line per model.
pub fn draw_auroc_vs_eps<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    panels: &[EpsPanel],
    cols: usize,
) -> Result<()> {
    const FIG: &str = "auroc vs eps";
    let style = PanelStyle {
        x_desc: "eps",
        y_desc: "AUROC",
        ..Default::default()
    };
    for (area, panel) in start(FIG, root, panels, panels.len(), cols)?
        .iter()
        .zip(panels)
    {
        let eps = panel.series.iter().flat_map(|s| s.1.iter().map(|p| p.0));
        let (lo, hi) = eps.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
        let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
        let mut chart = style.chart(FIG, area, &panel.title, padded(lo, hi), 0f64..1.0001f64)?;
        for (i, (model, pts)) in panel.series.iter().enumerate() {
            let color = model_color(model, i);
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(plot_err(FIG))?
                .label(model.to_uppercase())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))
                .map_err(plot_err(FIG))?;
        }
        style.legend(FIG, &mut chart)?;
    }
    Ok(())
}

/// A figure with its data, renderable to any backend.
#[derive(Debug, Clone)]
pub enum Figure {
    Roc { panels: Vec<RocPanel>, cols: usize },
    ScoreHistograms { panels: Vec<HistPanel>, cols: usize },
    Reliability { models: Vec<ReliabilitySeries> },
    McCurve { series: Vec<McSeries> },
    AurocVsEps { panels: Vec<EpsPanel>, cols: usize },
}

impl Figure {
    /// A file-name stem (`roc`, `score_hist`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            Figure::Roc { .. } => "roc",
            Figure::ScoreHistograms { .. } => "score_hist",
            Figure::Reliability { .. } => "reliability",
            Figure::McCurve { .. } => "mc_curve",
            Figure::AurocVsEps { .. } => "auroc_vs_eps",
        }
    }

    /// Pixel size: panels of [`PANEL`] in the figure's grid.
    pub fn size(&self) -> (u32, u32) {
        let (n, cols) = match self {
            Figure::Roc { panels, cols } => (panels.len(), *cols),
            Figure::ScoreHistograms { panels, cols } => (panels.len(), *cols),
            Figure::Reliability { models } => (models.len(), models.len()),
            Figure::McCurve { .. } => (2, 2),
            Figure::AurocVsEps { panels, cols } => (panels.len(), *cols),
        };
        let cols = cols.clamp(1, n.max(1));
        let rows = n.div_ceil(cols).max(1);
        (PANEL.0 * cols as u32, PANEL.1 * rows as u32)
    }

    /// Draws onto any plotters drawing area.
    pub fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        ensure_font();
        match self {
            Figure::Roc { panels, cols } => draw_roc_panels(root, panels, *cols),
            Figure::ScoreHistograms { panels, cols } => draw_score_histograms(root, panels, *cols),
            Figure::Reliability { models } => draw_reliability(root, models),
            Figure::McCurve { series } => draw_mc_curve(root, series),
            Figure::AurocVsEps { panels, cols } => draw_auroc_vs_eps(root, panels, *cols),
        }
    }

    /// The figure as an SVG document.
    pub fn to_svg(&self) -> Result<String> {
        let mut buf = String::new();
        {
            let root = SVGBackend::with_string(&mut buf, self.size()).into_drawing_area();
            self.draw(&root)?;
            root.present().map_err(plot_err(self.name()))?;
        }
        Ok(buf)
    }

    /// Writes the figure as a PNG file.
    pub fn write_png(&self, path: &Path) -> Result<()> {
        let root = BitMapBackend::new(path, self.size()).into_drawing_area();
        self.draw(&root)?;
        root.present().map_err(|e| ReportError::Plot {
            figure: self.name().into(),
            message: format!("writing {}: {e}", path.display()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classification::reliability_bins;
    use crate::detection::{roc_curve, DetectionMetrics};

    fn scores() -> (Vec<f64>, Vec<bool>) {
        let mut r = crate::rng::Xoshiro256pp::seed_from_u64(9);
        let l: Vec<bool> = (0..400).map(|i| i % 2 == 0).collect();
        let s = l
            .iter()
            .map(|&y| r.next_f64() + if y { 0.5 } else { 0.0 })
            .collect();
        (s, l)
    }

    fn roc_fig() -> Figure {
        let (s, l) = scores();
        let c = roc_curve(&s, &l).unwrap().thin(100);
        let auroc = DetectionMetrics::compute(&s, &l).unwrap().auroc;
        let series = |m: &str| RocSeries {
            model: m.into(),
            curve: c.clone(),
            auroc,
        };
        Figure::Roc {
            panels: vec![RocPanel {
                title: "FGSM eps=0.0314".into(),
                series: vec![series("dnn"), series("bnn")],
            }],
            cols: 3,
        }
    }

    /// SVG checks: the document is complete, the titles and legends are there as text.
    fn check_svg(fig: &Figure, must_contain: &[&str]) {
        let svg = fig.to_svg().unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        for s in must_contain {
            assert!(svg.contains(s), "`{s}` missing from the {} SVG", fig.name());
        }
    }

    #[test]
    fn roc_figure_renders() {
        let fig = roc_fig();
        check_svg(
            &fig,
            &["FGSM eps=0.0314", "DNN (AUROC", "BNN (AUROC", "<polyline"],
        );
        assert_eq!(fig.size(), (PANEL.0, PANEL.1));
    }

    #[test]
    fn histogram_figure_renders() {
        let (s, l) = scores();
        let clean: Vec<f64> = s.iter().zip(&l).filter(|p| !*p.1).map(|p| *p.0).collect();
        let adv: Vec<f64> = s.iter().zip(&l).filter(|p| *p.1).map(|p| *p.0).collect();
        let fig = Figure::ScoreHistograms {
            panels: vec![
                HistPanel {
                    title: "DNN / PGD".into(),
                    clean: clean.clone(),
                    adversarial: adv.clone(),
                },
                HistPanel {
                    title: "BNN / PGD".into(),
                    clean: vec![1.0; 5],
                    adversarial: vec![1.0; 5],
                },
            ],
            cols: 2,
        };
        check_svg(
            &fig,
            &[
                "DNN / PGD",
                "BNN / PGD",
                "clean (n=200)",
                "adversarial (n=200)",
            ],
        );
        assert_eq!(
            histogram(&[0.0, 0.5, 1.0, 1.0], 0.0, 1.0, 2),
            vec![0.25, 0.75]
        );
    }

    #[test]
    fn reliability_figure_renders() {
        let conf = [0.95, 0.9, 0.55, 0.6, 0.99, 0.3];
        let ok = [true, true, false, true, true, false];
        let bins = reliability_bins(&conf, &ok, 15).unwrap();
        let fig = Figure::Reliability {
            models: vec![
                ReliabilitySeries {
                    model: "dnn".into(),
                    bins: bins.clone(),
                    ece: 0.1234,
                },
                ReliabilitySeries {
                    model: "bnn".into(),
                    bins,
                    ece: 0.05,
                },
            ],
        };
        check_svg(
            &fig,
            &["DNN (ECE 0.1234)", "BNN (ECE 0.0500)", "mean confidence"],
        );
    }

    #[test]
    fn mc_curve_figure_renders() {
        let pts = |a: f64| (1..=5).map(move |s| (s * 4, a + 0.01 * s as f64, 1.0 - 0.1 * s as f64));
        let fig = Figure::McCurve {
            series: vec![
                McSeries {
                    model: "bnn".into(),
                    points: pts(0.7).collect(),
                },
                McSeries {
                    model: "dnn".into(),
                    points: vec![(1, 0.7, 1.2)],
                },
            ],
        };
        check_svg(
            &fig,
            &["top-1 accuracy vs MC samples", "NLL vs MC samples", "BNN"],
        );
    }

    #[test]
    fn auroc_vs_eps_figure_renders_svg_and_png() {
        let fig = Figure::AurocVsEps {
            panels: vec![EpsPanel {
                title: "PGD".into(),
                series: vec![
                    ("dnn".into(), vec![(2.0 / 255.0, 0.6), (8.0 / 255.0, 0.7)]),
                    ("bnn".into(), vec![(2.0 / 255.0, 0.9), (8.0 / 255.0, 0.99)]),
                ],
            }],
            cols: 2,
        };
        check_svg(&fig, &["PGD", "AUROC", "DNN", "BNN"]);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("eps.png");
        fig.write_png(&p).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        // Text and lines were rasterised: the image is far from a blank white PNG.
        assert!(bytes.len() > 5_000, "PNG only {} bytes", bytes.len());
    }

    #[test]
    fn empty_figure_is_an_error() {
        let fig = Figure::Roc {
            panels: vec![],
            cols: 1,
        };
        assert!(matches!(fig.to_svg(), Err(ReportError::Empty { .. })));
    }
}
