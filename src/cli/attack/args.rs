//! The flags of `libre attack` and their translation into the attack's settings (the registry's
//! JSON parameters), each refused by name before any work.

use crate::cli::args::{DeviceArg, McDrawsArg, ModelSource};
use libre_attacks::ATTACK_NAMES;
use serde_json::{json, Map, Value};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    // The target.
    #[command(flatten)]
    pub source: ModelSource,
    /// Craft on this model (a libre checkpoint or zoo:NAME) instead and evaluate on --weights
    /// (transfer attack); without it the target is the surrogate too.
    #[arg(long)]
    pub surrogate: Option<String>,
    /// Images to attack: a data spec (mnist:test, mnist:test[0:1000], folder:DIR, FILE.safetensors).
    #[arg(long)]
    pub data: String,
    /// Attack only the first N images [default: all].
    #[arg(long)]
    pub limit: Option<usize>,
    /// fgsm, fgsm-rs, fgsm-l2, bim, bim-l2, pgd, pgd-l2, mim, tim, di-mim, cw, cw-l2, deepfool,
    /// deepfool-linf, spsa.
    #[arg(long)]
    pub attack: String,
    /// Perturbation budget (per coordinate; l2 attacks use radius eps*sqrt(D)).
    #[arg(long, allow_negative_numbers = true)]
    pub eps: Option<f64>,
    /// Step of iterative attacks [default: 2.5 * eps / steps when --eps is given; else the
    /// attack's own default].
    #[arg(long)]
    pub step_size: Option<f64>,
    /// Iterations of iterative attacks [default: the attack's own: 20 for bim/pgd/mim/tim/di-mim,
    /// 100 for spsa; at most 100000].
    #[arg(long)]
    pub steps: Option<usize>,
    /// PGD: start at the clean image instead of a uniform random point of the eps-ball.
    #[arg(long)]
    pub no_random_start: bool,
    /// Targeted attack towards a random class other than the label (seeded).
    #[arg(long)]
    pub targeted: bool,
    /// Targeted attack towards this class.
    #[arg(long)]
    pub target_class: Option<i64>,
    /// Attack the Bayes ensemble's predictive with S MC samples (default: the checkpoint's S for a
    /// Bayesian model; deterministic for a DNN).
    #[arg(long)]
    pub mc_samples: Option<usize>,
    #[command(flatten)]
    pub mc_draws: McDrawsArg,
    /// Adaptive ("mimicry") attack: ascend the attack loss minus C times the detector score
    /// (--score), both from one forward.
    #[arg(long, value_name = "C")]
    pub adaptive: Option<f64>,
    /// The detector score the adaptive attack pushes down [default: feature-variance for a
    /// Bayesian model, msp for a DNN].
    #[arg(long)]
    pub score: Option<String>,
    /// Expectation over Transformation: forwards averaged per gradient step for a victim that
    /// samples its weights (mean-field); ignored (one forward) for a deterministic one.
    #[arg(long)]
    pub eot: Option<usize>,
    /// Extra attack settings as KEY=JSON (e.g. --param mc_mode='"weighted-samples"').
    #[arg(long = "param")]
    pub params: Vec<String>,
    /// Seed of random starts, random targets, SPSA directions and weight sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Images per attack batch.
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// Output batch file (.safetensors).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub device: DeviceArg,
    /// Numeric precision of the target's (and surrogate's) forward and backward: f32, or bf16 to
    /// attack a model deployed at bf16 (input gradients come back as float32; the clean and
    /// robust accuracies are measured at this precision; docs/design.md section 15).
    #[arg(long, default_value = "f32", value_parser = crate::cli::parse_precision)]
    pub precision: libre::runtime::precision::Precision,
}

/// The most iterations (`--steps`, or an attack's `max_iter`) `libre attack` runs; the same
/// bound as the adaptive attacks' `MAX_STEPS` in the attacks crate.
const MAX_STEPS: usize = 100_000;

impl Args {
    /// The attack's settings from the flags (`--param` last, so it overrides), refusing an unknown
    /// attack, non-finite numbers and iteration budgets that would never finish, by flag.
    pub fn attack_params(&self) -> anyhow::Result<Map<String, Value>> {
        if !ATTACK_NAMES.contains(&self.attack.as_str()) {
            anyhow::bail!(
                "unknown --attack '{}': available {}",
                self.attack,
                ATTACK_NAMES.join(", ")
            );
        }
        // JSON has no NaN or infinity: they would reach the registry as null and fail there with a
        // message that does not name the flag.
        for (flag, v) in [("--eps", self.eps), ("--step-size", self.step_size)] {
            if let Some(v) = v.filter(|v| !(v.is_finite() && *v >= 0.0)) {
                anyhow::bail!("{flag} {v}: must be a finite number >= 0");
            }
        }
        let mut params = Map::new();
        if let Some(e) = self.eps {
            params.insert("eps".into(), json!(e));
        }
        if let Some(a) = self.step_size {
            params.insert("step_size".into(), json!(a));
        }
        if let Some(k) = self.steps {
            params.insert("steps".into(), json!(k));
        }
        if self.no_random_start {
            params.insert("random_start".into(), json!(false));
        }
        let targeted = self.targeted || self.target_class.is_some();
        if targeted {
            params.insert("targeted".into(), json!(true));
        }
        if let Some(c) = self.adaptive {
            if !c.is_finite() {
                anyhow::bail!("--adaptive {c}: C must be a finite number");
            }
            params.insert("adaptive_c".into(), json!(c));
        }
        if let Some(k) = self.eot {
            params.insert("eot_samples".into(), json!(k));
        }
        for p in &self.params {
            let (k, v) = p
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("--param {p}: expected KEY=JSON"))?;
            let v: Value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string()));
            params.insert(k.to_string(), v);
        }
        // Iteration budgets past these would not end in any useful time (a typo of a few zeros):
        // refused before any work, by name. `--param` can set them too.
        for key in ["steps", "max_iter", "max_iterations", "binary_search_steps"] {
            if let Some(v) = params.get(key).and_then(Value::as_u64) {
                if v > MAX_STEPS as u64 {
                    let flag = if key == "steps" && self.steps.is_some() {
                        "--steps".to_string()
                    } else {
                        format!("--param {key}")
                    };
                    anyhow::bail!(
                        "{flag} {v}: at most {MAX_STEPS} iterations (a larger budget would not \
                         finish in useful time)"
                    );
                }
            }
        }
        Ok(params)
    }
}
