//! The flags of `libre train` and `libre finetune`, with their help, and the parsers of the
//! flags whose values clap cannot check alone.

use crate::cli::args::DeviceArg;
use libre::bayes::McSampling;
use libre::train::Augment;
use std::path::PathBuf;

/// Options both commands share.
#[derive(clap::Args, Debug)]
pub struct Common {
    /// Training data spec (mnist:train, fashion-mnist:train, cifar10:DIR:train, ...).
    #[arg(long, required_unless_present = "resume")]
    pub data: Option<String>,
    /// Use only the first N training examples.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Evaluate on this data set after every epoch (e.g. mnist:test).
    #[arg(long)]
    pub eval_data: Option<String>,
    /// Use only the first N evaluation examples.
    #[arg(long)]
    pub eval_limit: Option<usize>,
    /// Training epochs [default: 10 for train, 1 for finetune].
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Examples per optimiser step.
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// Seed of the initialisation, data order, augmentation and weight sampling (equal seeds give
    /// equal weights).
    #[arg(long, default_value_t = 0)]
    pub seed: i64,
    /// Data augmentation: auto (crop+flip for colour images, none for digits), none, crop-flip.
    #[arg(long, default_value = "auto")]
    pub augment: String,
    /// Run directory (config.json, metrics.csv, checkpoints, summary.json).
    #[arg(long, required_unless_present = "resume")]
    pub out: Option<PathBuf>,
    /// Continue the run in this directory from its last complete epoch.
    #[arg(long, conflicts_with = "out")]
    pub resume: Option<PathBuf>,
    /// Replace the run already in --out (its run files are removed first; other files stay).
    #[arg(long, conflicts_with = "resume")]
    pub force: bool,
    #[command(flatten)]
    pub device: DeviceArg,
}

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// Architecture: lenet5, digitcnn, mlp, resnet18, resnet34, resnet50, wrn28-10.
    #[arg(long)]
    pub model: Option<String>,
    /// ResNet: CIFAR stem (3x3 conv, no max-pool), for small images.
    #[arg(long)]
    pub cifar_stem: bool,
    /// Learning rate of SGD with Nesterov momentum (cosine schedule).
    #[arg(long, default_value_t = 0.05)]
    pub lr: f64,
    /// Weight decay λ (the MAP prior).
    #[arg(long, default_value_t = 5e-4)]
    pub decay: f64,
    #[command(flatten)]
    pub common: Common,
}

#[derive(clap::Args, Debug)]
pub struct FinetuneArgs {
    /// The pretrained model: a libre checkpoint or zoo:NAME.
    #[arg(long)]
    pub weights: Option<String>,
    /// Recipe: `bayesadapter` (prior-regularised fine-tuning of a posterior), `libre` (LiBRe:
    /// a last-block ensemble trained to disagree on noise-perturbed images; docs/detection.md) or
    /// `libre-robust` (LiBRe whose perturbed copies are adversarial examples crafted against the
    /// current model and detector each step, with adversarial cross-entropy; start it from an
    /// adversarially trained network, e.g. zoo:lenet5-mnist-adv; docs/detection.md,
    /// "Adversarial LiBRe training").
    #[arg(long, default_value = "bayesadapter", value_parser = ["bayesadapter", "libre", "libre-robust"])]
    pub recipe: String,
    /// mean-field, ensemble or low-rank [default: mean-field; ensemble for --recipe libre].
    #[arg(long)]
    pub posterior: Option<String>,
    /// Layers to make Bayesian: all, last-block, a path, a comma list or a glob [default: all;
    /// last-block for --recipe libre].
    #[arg(long)]
    pub layers: Option<String>,
    /// MC samples for evaluation (and ensemble members / low-rank components).
    #[arg(long, default_value_t = 20)]
    pub mc_samples: usize,
    /// Learning rate of the means (BayesAdapter: 8e-4, momentum 0.9, Nesterov).
    #[arg(long, default_value_t = 8e-4)]
    pub lr_mean: f64,
    /// Learning rate of psi / members / low-rank factors (BayesAdapter: 0.1 for psi).
    #[arg(long)]
    pub lr_posterior: Option<f64>,
    /// Prior weight decay λ (N(0, 1/(λN)), N = training-set size).
    #[arg(long, default_value_t = 1e-4)]
    pub decay: f64,
    /// Centre the prior of the means at the pretrained weights (MOPED).
    #[arg(long)]
    pub moped: bool,
    /// How a mean-field posterior is sampled in training: local-reparam (the default: each
    /// example gets its own output distribution at Linear and Conv2d, Kingma et al. 2015, with
    /// per-example weight draws for the other layers; the fastest), per-example (a weight draw per
    /// example everywhere: the same distribution, about 10x slower), flipout, per-batch.
    /// Ensembles and low-rank posteriors route members per example whatever this says.
    #[arg(long, default_value = "local-reparam")]
    pub sampling: String,
    /// Enable the uncertainty regulariser with this noise eps (e.g. 0.1).
    #[arg(long)]
    pub unc_reg_eps: Option<f64>,
    /// Uncertainty regulariser: the mutual information asked of noisy inputs (hinge margin γ in
    /// coef * mean ReLU(γ - MI)).
    #[arg(long, default_value_t = 0.75)]
    pub unc_reg_gamma: f64,
    /// Uncertainty regulariser: its weight in the loss.
    #[arg(long, default_value_t = 1.0)]
    pub unc_reg_coef: f64,
    /// LiBRe: the disagreement hinge: anchored (members agree on clean images, disagree on
    /// noise; chosen on validation data, docs/results.md), reference (the published one, which
    /// detects nothing on MNIST) or relative (docs/detection.md).
    #[arg(long, default_value = "anchored")]
    pub objective: String,
    /// LiBRe: weight of the disagreement hinge (0 = plain fine-tuning, the ablation).
    #[arg(long, default_value_t = 1.0)]
    pub alpha: f64,
    /// LiBRe: the hinge margin on the mean squared member disagreement.
    #[arg(long, default_value_t = 0.5)]
    pub gamma: f64,
    /// LiBRe: noise magnitude range MIN:MAX (pixel units) [default: 0.5x to 2x the data set's
    /// customary attack eps: 0.15:0.6 for 28 px digits, 4/255:16/255 for CIFAR-size images].
    #[arg(long, value_name = "MIN:MAX")]
    pub noise_eps: Option<String>,
    /// LiBRe: per-image probability of low-pass filtering the noise.
    #[arg(long, default_value_t = 0.03)]
    pub blur_prob: f64,
    /// LiBRe: start the members at the pretrained weights plus Gaussian noise of this many
    /// standard deviations of each weight tensor (0 = identical copies, the reference).
    #[arg(long, default_value_t = 0.0)]
    pub member_init_std: f64,
    /// LiBRe: initial learning rate of the ensemble members (cosine-annealed to --ft-lr). The
    /// published 1e-3 leaves identical members nearly identical for an epoch; 0.05 was chosen on
    /// validation data (docs/results.md).
    #[arg(long, default_value_t = 0.05)]
    pub lr: f64,
    /// LiBRe: learning rate of every other parameter (and the members' final one).
    #[arg(long, default_value_t = 1e-4)]
    pub ft_lr: f64,
    /// libre-robust: the attack crafting each step's copies against the current model's
    /// predictive and feature variance: selective, mimicry or pgd-restarts.
    #[arg(long, default_value = "selective")]
    pub adv_attack: String,
    /// libre-robust: the attack's eps (pixel units) [default: the data set's customary eps,
    /// 0.3 for 28 px digits].
    #[arg(long)]
    pub adv_eps: Option<f64>,
    /// libre-robust: the attack's steps per training step.
    #[arg(long, default_value_t = 10)]
    pub adv_steps: usize,
    /// libre-robust: the attack's step size [default: eps / 4].
    #[arg(long)]
    pub adv_step_size: Option<f64>,
    /// libre-robust: mimicry's C when --adv-attack mimicry.
    #[arg(long, default_value_t = 10.0)]
    pub adv_c: f64,
    /// libre-robust: weight of the members' cross-entropy on the adversarial copies (0: the
    /// classifier is not trained on them).
    #[arg(long, default_value_t = 1.0)]
    pub adv_ce: f64,
    /// libre-robust: which crafted copies the members must disagree on: misclassified (only
    /// those one of their two members gets wrong; the rest enter the cross-entropy only; chosen
    /// on validation data, docs/results.md) or all.
    #[arg(long, default_value = "misclassified", value_parser = ["all", "misclassified"])]
    pub adv_hinge: String,
    #[command(flatten)]
    pub common: Common,
}

/// `--noise-eps MIN:MAX`.
pub fn parse_range(s: &str) -> anyhow::Result<(f64, f64)> {
    let (a, b) = s
        .split_once(':')
        .ok_or_else(|| anyhow::anyhow!("--noise-eps '{s}': expected MIN:MAX, e.g. 0.15:0.6"))?;
    let p = |t: &str| {
        t.trim()
            .parse::<f64>()
            .map_err(|_| anyhow::anyhow!("--noise-eps '{s}': '{t}' is not a number"))
    };
    Ok((p(a)?, p(b)?))
}

/// `--augment` for data of image shape `shape`.
pub fn parse_augment(s: &str, shape: [usize; 3]) -> anyhow::Result<Augment> {
    Ok(match s {
        "auto" => Augment::auto(shape),
        "none" => Augment::None,
        "crop-flip" => Augment::CropFlip,
        _ => anyhow::bail!("--augment must be auto, none or crop-flip, got '{s}'"),
    })
}

/// `--sampling`.
pub fn parse_sampling(s: &str) -> anyhow::Result<McSampling> {
    Ok(match s {
        "per-example" => McSampling::PerExample,
        "per-batch" => McSampling::PerBatch,
        "local-reparam" => McSampling::LocalReparam,
        "flipout" => McSampling::Flipout,
        _ => anyhow::bail!(
            "--sampling must be per-example, per-batch, local-reparam or flipout, got '{s}'"
        ),
    })
}
