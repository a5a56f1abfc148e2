//! Writes a synthetic run directory (scores.csv, classification.csv, reliability.csv,
//! mc_curve.csv) and renders its report: a quick way to look at the figures and the HTML.
//!
//! `cargo run -p libre-reports --release --example sample_report -- /tmp/sample_run`
//! then open /tmp/sample_run/report/index.html.
use libre_reports::bootstrap::BootstrapConfig;
use libre_reports::classification::ClassificationMetrics;
use libre_reports::report::{render_run, ReportOptions};
use libre_reports::rng::Xoshiro256pp;
use libre_reports::tables::{self, McCurveRow, ScoreRow, Subset};
use std::path::PathBuf;

fn normal(r: &mut Xoshiro256pp) -> f64 {
    // Box-Muller; 1 - u keeps the log argument in (0, 1].
    let (u, v) = (1.0 - r.next_f64(), r.next_f64());
    (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "sample_run".into()),
    );
    std::fs::create_dir_all(&dir)?;
    let mut r = Xoshiro256pp::seed_from_u64(2021);
    let mut rows = Vec::new();
    // Log feature-variance scores: the BNN separates adversarial inputs far better (LiBRe).
    for (model, gain) in [("dnn", 0.6), ("bnn", 2.5)] {
        for _ in 0..2000 {
            rows.push(ScoreRow {
                model: model.into(),
                attack: "clean".into(),
                eps: 0.0,
                label: false,
                score: normal(&mut r),
                clean_correct: Some(r.next_f64() < 0.76),
                adv_success: None,
            });
        }
        for (attack, strength) in [("fgsm", 1.2), ("pgd", 0.9), ("cw", 0.7)] {
            for eps in [4.0 / 255.0, 8.0 / 255.0, 16.0 / 255.0] {
                for _ in 0..1000 {
                    let shift: f64 = gain * strength * (eps * 255.0 / 16.0f64).sqrt();
                    rows.push(ScoreRow {
                        model: model.into(),
                        attack: attack.into(),
                        eps: (eps * 1e4f64).round() / 1e4,
                        label: true,
                        score: normal(&mut r) + shift,
                        clean_correct: Some(r.next_f64() < 0.76),
                        adv_success: Some(r.next_f64() < 0.9),
                    });
                }
            }
        }
    }
    tables::write_scores(&dir.join("scores.csv"), &rows)?;

    // Classification: a synthetic 10-class predictive; the BNN is the better calibrated one.
    let (n, k) = (5000, 10);
    let mut class_rows = Vec::new();
    let mut rel_rows = Vec::new();
    for (model, temp) in [("dnn", 0.45), ("bnn", 0.8)] {
        let mut probs = ndarray::Array2::<f64>::zeros((n, k));
        let mut labels = Vec::with_capacity(n);
        for i in 0..n {
            let y = r.below(k);
            labels.push(y as i64);
            let mut logits: Vec<f64> = (0..k).map(|_| 1.5 * normal(&mut r)).collect();
            logits[y] += 2.6;
            let m = logits.iter().cloned().fold(f64::MIN, f64::max);
            let e: Vec<f64> = logits.iter().map(|l| ((l - m) / temp).exp()).collect();
            let s: f64 = e.iter().sum();
            for j in 0..k {
                probs[[i, j]] = e[j] / s;
            }
        }
        let m = ClassificationMetrics::compute(probs.view(), &labels)?;
        let (row, bins) = tables::classification_rows(model, &m);
        class_rows.push(row);
        rel_rows.extend(bins);
    }
    tables::write_rows(&dir.join("classification.csv"), &class_rows)?;
    tables::write_rows(&dir.join("reliability.csv"), &rel_rows)?;
    let mut mc = vec![McCurveRow {
        model: "dnn".into(),
        n_samples: 1,
        top1: class_rows[0].top1,
        nll: class_rows[0].nll,
    }];
    for s in [1usize, 2, 5, 10, 20] {
        mc.push(McCurveRow {
            model: "bnn".into(),
            n_samples: s,
            top1: class_rows[1].top1 - 0.02 / s as f64,
            nll: class_rows[1].nll + 0.08 / s as f64,
        });
    }
    tables::write_rows(&dir.join("mc_curve.csv"), &mc)?;

    let opts = ReportOptions {
        title: "LiBRe sample report (synthetic scores)".into(),
        subset: Subset::All,
        bootstrap: Some(BootstrapConfig {
            n_resamples: 200,
            seed: 1,
            level: 0.95,
        }),
        png: true,
        ..Default::default()
    };
    let s = render_run(&dir, &dir.join("report"), &opts)?;
    println!("{}", s.out_dir.join("index.html").display());
    Ok(())
}
