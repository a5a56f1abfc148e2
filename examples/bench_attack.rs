//! The libre side of the adaptive-attack speed comparison (issue 25, item 5;
//! `ATTACK=1 scripts/bench_vs_pytorch.sh` runs it interleaved with
//! `scripts/bench_vs_pytorch.py --attack`, the same loop in plain PyTorch).
//!
//! `[BENCH_THREADS=n] [BENCH_WARMUP=w] bench_attack CASE WEIGHTS DATA IMAGES STEPS REPS`
//!
//! WEIGHTS is a LeNet5 whose `linear1` is an ensemble (a `libre convert --posterior ensemble
//! --layers last-block` file, or a LiBRe detector file, whose calibrated threshold `selective`
//! uses); DATA a data spec (`mnist:test`); the first IMAGES images are attacked as one batch,
//! L_inf eps 0.3, step 0.01, through the 20-member parallel MC forward (`ModelVictim`, score
//! `feature-variance`) and `libre_attacks::Adaptive`, the engine `libre attack --adaptive` and
//! `libre evaluate` run. CASE:
//! - `attack-step`: `mimicry` (ascend CE of the MC-averaged predictive - C * feature variance,
//!   C = 100), STEPS steps, one restart, constant step, no early stop, no threshold: the timed
//!   unit is the whole `perturb` (random start, STEPS forward + backward, the engine's
//!   best-iterate bookkeeping, one last checking forward) and the printed time is per step
//!   (unit / STEPS);
//! - `selective`: the `selective` attack with STEPS steps, one restart, constant step, per-image
//!   early stop once evaded, at the detector's calibrated threshold (else the threshold at 5%
//!   FPR of the IMAGES clean scores); the printed time is the whole attack; the evaded % and the
//!   steps' images go to stderr.
//!
//! `BENCH_PRECISION=bf16` runs the model's forward and backward in bfloat16 (what `libre attack
//! --precision bf16` does; the objective, the gradient on the float32 image and the step stay
//! float32); `selective` then still uses the file's threshold, so the evaded % is only
//! indicative there (a bf16 detector is calibrated at bf16, docs/detection.md).
//!
//! Prints one `CASE MILLISECONDS` line per timed unit on stdout, after `w` untimed warm-up units
//! (default 1; `selective` runs its warm-up with 2 steps).
use libre::bayes::ForwardMode;
use libre::detect::victim::ModelVictim;
use libre::detect::Score;
use libre_attacks::{Adaptive, AdaptiveConfig, AdaptiveMode, Attack, Schedule, ScoreForm, Victim};
use std::time::Instant;
use tch::{Device, Kind};

const S: usize = 20;
const EPS: f64 = 0.3;
const STEP: f64 = 0.01;
const C: f64 = 100.0;

fn config(
    mode: AdaptiveMode,
    steps: usize,
    threshold: Option<f64>,
    early_stop: bool,
) -> AdaptiveConfig {
    let mut cfg = AdaptiveConfig::new(mode, ScoreForm::Linear);
    cfg.eps = EPS;
    cfg.step_size = STEP;
    cfg.steps = steps;
    cfg.restarts = 1;
    cfg.random_start = true;
    cfg.schedule = Schedule::Constant;
    cfg.threshold = threshold;
    cfg.early_stop = early_stop;
    if mode == AdaptiveMode::Mimicry {
        cfg.objective.adaptive_c = C;
    }
    cfg
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> Result<T, String> {
    args[i]
        .parse()
        .map_err(|_| format!("{what} {:?} is not a valid number", args[i]))
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() != 6 {
        return Err(
            "usage: bench_attack attack-step|selective WEIGHTS DATA IMAGES STEPS REPS".into(),
        );
    }
    let case = args[0].as_str();
    let (images, steps, reps): (usize, usize, usize) = (
        arg(&args, 3, "IMAGES")?,
        arg(&args, 4, "STEPS")?,
        arg(&args, 5, "REPS")?,
    );
    if images == 0 || steps == 0 {
        return Err("IMAGES and STEPS must be >= 1".into());
    }
    if let Ok(n) = std::env::var("BENCH_THREADS") {
        tch::set_num_threads(
            n.parse()
                .map_err(|_| format!("BENCH_THREADS={n:?} is not a number"))?,
        );
    }
    let warmup: usize = match std::env::var("BENCH_WARMUP") {
        Ok(v) => v
            .parse()
            .map_err(|_| format!("BENCH_WARMUP={v:?} is not a number"))?,
        Err(_) => 1,
    };
    let device = Device::Cpu;
    let mut det = libre::detect::Detector::load(std::path::Path::new(&args[1]), device, None)
        .map_err(|e| format!("{}: {e}", args[1]))?;
    // BENCH_PRECISION=bf16: the forward and backward through the model in bfloat16 (what
    // `libre attack --precision bf16` runs), the input, the objective and the step in float32.
    let precision: libre::runtime::precision::Precision = std::env::var("BENCH_PRECISION")
        .unwrap_or_else(|_| "f32".into())
        .parse()
        .map_err(|e| format!("BENCH_PRECISION: {e}"))?;
    det.set_precision(precision)
        .map_err(|e| format!("BENCH_PRECISION={precision}: {e}"))?;
    let calibrated = det.meta().map(|m| m.calibration.threshold);
    let model = det.model();
    let ds = libre::data::open(&args[2], Some(images), &mut |_| {})
        .map_err(|e| format!("{}: {e}", args[2]))?;
    let (x, y) = ds
        .batch(0, images.min(ds.len()))
        .map_err(|e| format!("{}: {e}", args[2]))?;
    let victim = ModelVictim {
        model,
        mode: ForwardMode::ParallelMc { samples: S },
        score: Some(Score::FeatureVariance),
        classic: None,
    };
    let n = x.size()[0];
    let (attack, warm) = match case {
        "attack-step" => {
            let cfg = config(AdaptiveMode::Mimicry, steps, None, false);
            (Adaptive::new(cfg.clone()), Adaptive::new(cfg))
        }
        "selective" => {
            let t = match calibrated {
                Some(t) => t,
                None => {
                    let s = tch::no_grad(|| victim.score(&x)).expect("a score");
                    let s: Vec<f64> =
                        Vec::<f64>::try_from(s.to_kind(Kind::Double)).map_err(|e| e.to_string())?;
                    libre_reports::detection::threshold_for_fpr(&s, 0.05)
                        .map_err(|e| e.to_string())?
                }
            };
            eprintln!(
                "selective: threshold {t} ({})",
                if calibrated.is_some() {
                    "the detector's calibrated one"
                } else {
                    "5% FPR of the clean scores"
                }
            );
            (
                Adaptive::new(config(AdaptiveMode::Selective, steps, Some(t), true)),
                Adaptive::new(config(AdaptiveMode::Selective, 2, Some(t), true)),
            )
        }
        _ => return Err(format!("unknown case {case:?}: attack-step or selective")),
    };
    let (attack, warm) = (
        attack.map_err(|e| e.to_string())?,
        warm.map_err(|e| e.to_string())?,
    );
    eprintln!(
        "libre {case}: {n} images of {}, S = {S}, feature-variance, {} {steps} steps, \
         threads {}, precision {precision}, warm-up {warmup}, reps {reps}",
        args[2],
        attack.name(),
        tch::get_num_threads()
    );
    for i in 0..warmup {
        let _ = warm
            .perturb(&victim, &x, &y, i as u64)
            .map_err(|e| e.to_string())?;
    }
    for r in 0..reps {
        tch::manual_seed(r as i64);
        let t = Instant::now();
        let adv = attack
            .perturb(&victim, &x, &y, r as u64)
            .map_err(|e| e.to_string())?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        match case {
            "attack-step" => println!("lenet5:attack-step {:.3}", ms / steps as f64),
            _ => {
                println!("lenet5:selective-{steps} {ms:.3}");
                // The outcome, off the clock: misclassified and below the threshold.
                let (l, s) = tch::no_grad(|| victim.logits_and_score(&adv));
                let wrong = libre_attacks::predictive_log_probs(&l)
                    .argmax(-1, false)
                    .ne_tensor(&y);
                let t = attack.config().threshold.expect("selective has one");
                let evaded = wrong.logical_and(&s.expect("a score").lt(t));
                let k = evaded.sum(Kind::Int64).int64_value(&[]);
                eprintln!(
                    "selective: evaded {k} / {n} ({:.1}%) at threshold {t}",
                    100.0 * k as f64 / n as f64
                );
            }
        }
    }
    Ok(())
}

fn main() {
    let tuning = libre::runtime::alloc::keep_freed_memory();
    eprintln!("allocator: {tuning:?}");
    if let Err(e) = run() {
        eprintln!("bench_attack: {e}");
        std::process::exit(2);
    }
}
