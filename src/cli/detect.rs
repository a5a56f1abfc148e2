//! `libre calibrate` (a threshold at a target false-positive rate on held-out clean data) and
//! `libre detect` (score images, flag the suspicious ones). The work is in `libre::detect`.

use super::{CheckFailed, Output};
use anyhow::Context;
use libre::bayes::mode::McDropout;
use libre::detect::classic::{self, Classic, ClassicConfig, ClassicKind};
use libre::detect::detector::{DetectorMeta, DETECTOR_FORMAT};
use libre::detect::input::{self, ImagePolicy};
use libre::detect::parts;
use libre::detect::{scores, Detector, Score};
use libre::precision::Precision;
use libre::shard::Shard;
use serde_json::{json, Map, Value};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct CalibrateArgs {
    /// The model: a libre checkpoint, a detector file or zoo:NAME.
    #[arg(long)]
    pub weights: String,
    /// Clean held-out data the model was not trained on, e.g. mnist:train[55000:60000].
    #[arg(long)]
    pub data: String,
    /// Use only the first N images of --data.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Target false-positive rate on clean images.
    #[arg(long, default_value_t = 0.05)]
    pub fpr: f64,
    /// The detection score [default: feature-variance for a Bayesian model, msp for a DNN].
    #[arg(long)]
    pub score: Option<String>,
    /// MC samples of the forward [default: the posterior's S; 1 for a DNN].
    #[arg(long)]
    pub mc_samples: Option<usize>,
    /// How a mean-field posterior draws in the parallel MC forward: weights (S weight samples
    /// shared by the batch, the reference's estimator) or local-reparam (each example's outputs
    /// drawn from their Gaussian where that is exact: Linear layers and convs on 1x1 maps; same
    /// per-example predictive, independent across examples, much faster for big last blocks).
    #[arg(long, default_value = "weights", value_name = "DRAWS", value_parser = super::parse_mc_draws)]
    pub mc_draws: libre::bayes::McDraws,
    /// Images per forward.
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    /// Seed of libtorch's generator (mean-field posteriors sample their weights).
    #[arg(long, default_value_t = 0)]
    pub seed: i64,
    /// The detector file to write (.safetensors; the model plus the calibration).
    #[arg(long)]
    pub out: PathBuf,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// The detector: `libre` (the model's uncertainty scores), `mc-dropout` (dropout kept on at
    /// --dropout blocks, scored like a BNN), `bu` (the same, flagging on softmax variance:
    /// Feinman et al.'s Bayesian uncertainty), or a classic detector fitted here: `kd`, `kd-bu`,
    /// `lid`, `mahalanobis` (docs/detection.md, "Baselines"), or an input-transformation
    /// detector: `squeeze` (feature squeezing, nothing to fit) or `magnet` (autoencoders trained
    /// on --fit-data) (docs/detection.md, "Input-transformation detectors").
    #[arg(long, default_value = "libre")]
    pub detector: String,
    /// Blocks whose outputs MC dropout drops (comma list of the model's block names, e.g.
    /// conv2,linear1 for LeNet5): mc-dropout, and BU in kd-bu.
    #[arg(long, value_name = "BLOCKS")]
    pub dropout: Option<String>,
    /// MC dropout's drop probability [default: 0.5].
    #[arg(long)]
    pub dropout_p: Option<f64>,
    /// Classic detectors: clean labelled images to fit the densities, class Gaussians or LID
    /// reference on (disjoint from --data), e.g. mnist:train[0:10000].
    #[arg(long, value_name = "SPEC")]
    pub fit_data: Option<String>,
    /// Logistic-regression forms (kd-bu, lid, multi-block mahalanobis): adversarial images (a
    /// batch file from `libre attack`), the positives.
    #[arg(long, value_name = "FILE")]
    pub fit_adversarial: Option<String>,
    /// ... and clean images, the negatives (the images the adversarial file was crafted from).
    #[arg(long, value_name = "SPEC")]
    pub fit_clean: Option<String>,
    /// Blocks read by lid / mahalanobis (comma list) [default: all; mahalanobis without a
    /// logistic regression: the last].
    #[arg(long, value_name = "BLOCKS")]
    pub layers: Option<String>,
    /// KD bandwidth (Feinman et al.: 1.20 for MNIST, 0.26 for CIFAR-10) [default: 1.2].
    #[arg(long)]
    pub bandwidth: Option<f64>,
    /// LID neighbours [default: 20].
    #[arg(long)]
    pub lid_k: Option<usize>,
    /// LID clean reference set size (the first N of --fit-data) [default: 100].
    #[arg(long)]
    pub lid_reference: Option<usize>,
    /// Mahalanobis input pre-processing magnitude (0: none) [default: 0].
    #[arg(long)]
    pub noise: Option<f64>,
    /// Feature squeezing: the squeezers, comma list of bits-N (bit depth, 1 <= N <= 8) and
    /// median-KxK (median filter, 2 <= K <= 5); the score is the largest softmax L1 distance
    /// over them [default: bits-1,median-2x2, Xu et al.'s MNIST detector].
    #[arg(long, value_name = "LIST")]
    pub squeezers: Option<String>,
    /// MagNet: the sub-detectors whose union is the `magnet` score, comma list of l2 (AE I
    /// reconstruction, mean squared), l1 (AE II, mean absolute), jsd10, jsd40 (softmax JSD at
    /// T = 10, 40) [default: l2,l1, the paper's MNIST detectors]. Each is also a score of its own
    /// (magnet-l1, ...).
    #[arg(long, value_name = "LIST")]
    pub magnet_detectors: Option<String>,
    /// MagNet: the classifier sees AE I's reconstruction (the paper's reformer).
    #[arg(long)]
    pub reformer: bool,
    /// MagNet: autoencoder training epochs over nine tenths of --fit-data [default: 20].
    #[arg(long, value_name = "N")]
    pub ae_epochs: Option<usize>,
    /// MagNet: autoencoder Adam learning rate [default: 0.01; the paper: 0.001 for 100 epochs].
    #[arg(long, value_name = "LR")]
    pub ae_lr: Option<f64>,
    /// MagNet: std of the Gaussian noise added to the autoencoders' training inputs
    /// [default: 0.1].
    #[arg(long, value_name = "STD")]
    pub ae_noise: Option<f64>,
    /// MagNet: images per autoencoder training step [default: 256].
    #[arg(long, value_name = "N")]
    pub ae_batch_size: Option<usize>,
    /// Numeric precision of the forward: f32, or bf16 (bfloat16 weights and activations, float32
    /// scores; large matmuls about 3x faster on CPUs with AMX / AVX512-BF16). Recorded in
    /// the detector: `libre detect` scores at it (docs/design.md section 15).
    #[arg(long, default_value = "f32", value_parser = super::parse_precision)]
    pub precision: libre::precision::Precision,
}

/// Flags that apply only to some detectors are refused with the others, by name, before any
/// work: silently ignoring `--bandwidth` on the default detector would hide a mistake.
fn check_detector_flags(args: &CalibrateArgs) -> anyhow::Result<()> {
    // (flag, given, detectors it applies to)
    let flags: [(&str, bool, &[&str]); 17] = [
        (
            "--dropout",
            args.dropout.is_some(),
            &["mc-dropout", "bu", "kd-bu"],
        ),
        (
            "--dropout-p",
            args.dropout_p.is_some(),
            &["mc-dropout", "bu", "kd-bu"],
        ),
        (
            "--fit-data",
            args.fit_data.is_some(),
            &["kd", "kd-bu", "lid", "mahalanobis", "magnet"],
        ),
        (
            "--fit-adversarial",
            args.fit_adversarial.is_some(),
            &["kd-bu", "lid", "mahalanobis"],
        ),
        (
            "--fit-clean",
            args.fit_clean.is_some(),
            &["kd-bu", "lid", "mahalanobis"],
        ),
        ("--layers", args.layers.is_some(), &["lid", "mahalanobis"]),
        ("--bandwidth", args.bandwidth.is_some(), &["kd", "kd-bu"]),
        ("--lid-k", args.lid_k.is_some(), &["lid"]),
        ("--lid-reference", args.lid_reference.is_some(), &["lid"]),
        ("--noise", args.noise.is_some(), &["mahalanobis"]),
        ("--squeezers", args.squeezers.is_some(), &["squeeze"]),
        (
            "--magnet-detectors",
            args.magnet_detectors.is_some(),
            &["magnet"],
        ),
        ("--reformer", args.reformer, &["magnet"]),
        ("--ae-epochs", args.ae_epochs.is_some(), &["magnet"]),
        ("--ae-lr", args.ae_lr.is_some(), &["magnet"]),
        ("--ae-noise", args.ae_noise.is_some(), &["magnet"]),
        ("--ae-batch-size", args.ae_batch_size.is_some(), &["magnet"]),
    ];
    let known = [
        "libre",
        "mc-dropout",
        "bu",
        "kd",
        "kd-bu",
        "lid",
        "mahalanobis",
        "squeeze",
        "magnet",
    ];
    if !known.contains(&args.detector.as_str()) {
        return Ok(()); // the parser below names the detectors
    }
    let stray: Vec<String> = flags
        .iter()
        .filter(|(_, given, to)| *given && !to.contains(&args.detector.as_str()))
        .map(|(f, _, to)| format!("{f} (for {})", to.join(", ")))
        .collect();
    if !stray.is_empty() {
        anyhow::bail!(
            "--detector {} does not use {}: drop them, or choose the detector they belong to",
            args.detector,
            stray.join("; ")
        );
    }
    Ok(())
}

/// The smallest calibration set whose threshold is one of its scores at `fpr`: the threshold is
/// the k-th largest clean score with k = floor(fpr * n); with k = 0 (n < 1/fpr) it is merely
/// "above every score seen", its false-positive rate unmeasured (0 flagged of n, a 95% interval
/// reaching far above the target).
fn min_calibration_images(fpr: f64) -> usize {
    let mut n = (1.0 / fpr).ceil().max(1.0) as usize;
    while ((fpr * n as f64).floor() as usize) < 1 {
        n += 1;
    }
    while n > 1 && ((fpr * (n - 1) as f64).floor() as usize) >= 1 {
        n -= 1;
    }
    n
}

/// A data spec's source and image range `[start, end)` (`usize::MAX`: to the end), for telling
/// whether two specs share images. Path sources compare by their resolved path.
fn spec_range(spec: &str, limit: Option<usize>) -> Option<(String, usize, usize)> {
    let (base, slice) = libre::data::split_slice(spec).ok()?;
    let parsed: libre::data::DataSpec = base.parse().ok()?;
    let source = match parsed {
        libre::data::DataSpec::Registry { name, split } => {
            format!("{name}:{}", split.unwrap_or_default())
        }
        libre::data::DataSpec::Cifar10 { dir, train } => {
            format!("cifar10:{}:{train}", super::resolved(&dir).display())
        }
        libre::data::DataSpec::Folder(dir) => format!("folder:{}", super::resolved(&dir).display()),
        libre::data::DataSpec::BatchFile(p) => format!("file:{}", super::resolved(&p).display()),
    };
    let (a, b) = slice.unwrap_or((None, None));
    let a = a.unwrap_or(0);
    let mut b = b.unwrap_or(usize::MAX);
    if let Some(l) = limit {
        b = b.min(a.saturating_add(l));
    }
    Some((source, a, b))
}

/// Refuses fit data that shares images with the calibration data: a classic detector scores
/// its own fit images unlike fresh ones, so the threshold would not hold.
fn check_disjoint(fit: &str, data: &str, limit: Option<usize>) -> anyhow::Result<()> {
    let (Some((fs, fa, fb)), Some((ds, da, db))) = (spec_range(fit, None), spec_range(data, limit))
    else {
        return Ok(());
    };
    if fs == ds && fa.max(da) < fb.min(db) {
        let end = |e: usize| {
            if e == usize::MAX {
                String::new()
            } else {
                e.to_string()
            }
        };
        anyhow::bail!(
            "--fit-data {fit} and --data {data} share images [{}:{}]: the calibration data must \
             be disjoint from the fit data (e.g. --fit-data 'mnist:train[0:10000]' --data \
             'mnist:train[55000:60000]')",
            fa.max(da),
            end(fb.min(db))
        );
    }
    Ok(())
}

fn comma_list(s: &Option<String>) -> Vec<String> {
    s.as_deref()
        .map(|s| {
            s.split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// Builds `det` into the detector `--detector` asks for: MC dropout set on the model, or a
/// classic detector fitted on --fit-data (and the logistic regression's examples).
fn build_detector(
    args: &CalibrateArgs,
    det: &mut Detector,
    device: tch::Device,
    out: &Output,
) -> anyhow::Result<()> {
    let dropout = |samples: usize| -> anyhow::Result<Option<McDropout>> {
        let layers = comma_list(&args.dropout);
        if layers.is_empty() {
            return Ok(None);
        }
        let d = McDropout {
            layers,
            p: args.dropout_p.unwrap_or(0.5),
            samples,
        };
        d.validate()?;
        Ok(Some(d))
    };
    let s = args.mc_samples.unwrap_or(20);
    match args.detector.as_str() {
        "libre" => Ok(()),
        // BU (Feinman et al.) is MC dropout's softmax variance: the same detector, another score.
        "mc-dropout" | "bu" => {
            if det.model.posterior().is_some() {
                anyhow::bail!(
                    "--detector {} takes a deterministic network (this one has a posterior)",
                    args.detector
                );
            }
            let d = dropout(s)?.ok_or_else(|| {
                anyhow::anyhow!(
                    "--detector {} needs --dropout BLOCKS (the model's blocks: {})",
                    args.detector,
                    classic::block_names(det.model.as_ref())
                        .map(|v| v.join(", "))
                        .unwrap_or_default()
                )
            })?;
            det.model.set_mc_dropout(Some(d))?;
            det.samples = s;
            Ok(())
        }
        "squeeze" | "magnet" => {
            let c = fit_transform(args, det, device, out)?;
            det.classic = Some(c);
            Ok(())
        }
        name => {
            let kind: ClassicKind = name.parse()?;
            let fit = args.fit_data.as_ref().ok_or_else(|| {
                anyhow::anyhow!(
                    "--detector {name} is fitted on clean labelled images: pass --fit-data SPEC \
                     (disjoint from the calibration --data)"
                )
            })?;
            let cfg = ClassicConfig {
                kind,
                layers: comma_list(&args.layers),
                bandwidth: args.bandwidth.unwrap_or(1.2),
                k: args.lid_k.unwrap_or(20),
                reference: args.lid_reference.unwrap_or(100),
                noise: args.noise.unwrap_or(0.0),
                dropout: dropout(s)?,
                transform: None,
            };
            cfg.validate()?;
            let fit_ds = libre::data::open(fit, None, &mut super::fetch_note(out))?;
            let lr = match (&args.fit_adversarial, &args.fit_clean) {
                (Some(a), Some(c)) => Some((
                    (
                        libre::data::open(a, None, &mut super::fetch_note(out))?,
                        a.clone(),
                    ),
                    (
                        libre::data::open(c, None, &mut super::fetch_note(out))?,
                        c.clone(),
                    ),
                )),
                (None, None) => None,
                _ => anyhow::bail!("--fit-adversarial and --fit-clean go together"),
            };
            out.note(format!(
                "fitting {name} on {} clean images of {fit}{}",
                fit_ds.len(),
                lr.as_ref()
                    .map(|((a, an), (c, cn))| format!(
                        "; logistic regression on {} adversarial ({an}) vs {} clean ({cn})",
                        a.len(),
                        c.len()
                    ))
                    .unwrap_or_default()
            ));
            let t0 = std::time::Instant::now();
            // KD-BU's dropout masks (and any other draw of the fit) come from libtorch's
            // generator: seeded, so the same command writes the same detector.
            tch::manual_seed(args.seed);
            let c = Classic::fit(
                det.model.as_mut(),
                &cfg,
                (&fit_ds, fit),
                lr.as_ref()
                    .map(|((a, an), (c, cn))| ((a, an.as_str()), (c, cn.as_str()))),
                args.batch_size,
                device,
            )?;
            out.note(format!("fitted in {:.1} s", t0.elapsed().as_secs_f64()));
            if kind == ClassicKind::KdBu {
                det.samples = s;
            }
            det.classic = Some(c);
            Ok(())
        }
    }
}

/// Feature squeezing (built from its flags) or MagNet (its autoencoders trained on --fit-data).
fn fit_transform(
    args: &CalibrateArgs,
    det: &Detector,
    device: tch::Device,
    out: &Output,
) -> anyhow::Result<Classic> {
    use libre::detect::transform::{magnet, squeeze, TransformConfig};
    let kind: ClassicKind = args.detector.parse()?;
    let tcfg = match kind {
        ClassicKind::Squeeze => TransformConfig::Squeeze {
            squeezers: squeeze::parse_squeezers(
                args.squeezers.as_deref().unwrap_or("bits-1,median-2x2"),
            )?,
        },
        _ => {
            let d = magnet::MagnetConfig::default();
            TransformConfig::Magnet(magnet::MagnetConfig {
                detectors: match &args.magnet_detectors {
                    Some(l) => magnet::parse_detectors(l)?,
                    None => d.detectors,
                },
                reformer: args.reformer,
                epochs: args.ae_epochs.unwrap_or(d.epochs),
                lr: args.ae_lr.unwrap_or(d.lr),
                noise: args.ae_noise.unwrap_or(d.noise),
                batch_size: args.ae_batch_size.unwrap_or(d.batch_size),
            })
        }
    };
    let cfg = ClassicConfig {
        transform: Some(tcfg),
        ..ClassicConfig::new(kind)
    };
    cfg.validate()?;
    let fit = match (kind, &args.fit_data) {
        (ClassicKind::Magnet, Some(f)) => Some((
            libre::data::open(f, None, &mut super::fetch_note(out))?,
            f.clone(),
        )),
        (ClassicKind::Magnet, None) => anyhow::bail!(
            "--detector magnet trains its autoencoders on clean images: pass --fit-data SPEC \
             (disjoint from the calibration --data), e.g. --fit-data 'mnist:train[0:10000]'"
        ),
        _ => None,
    };
    if let Some((ds, f)) = &fit {
        out.note(format!(
            "training MagNet's autoencoders on {} clean images of {f} (the last {} held out)",
            ds.len() - ds.len() / 10,
            ds.len() / 10
        ));
    }
    let t0 = std::time::Instant::now();
    // The autoencoders' initialisation, batches and noise come from libtorch's generator: seeded,
    // so the same command writes the same detector.
    tch::manual_seed(args.seed);
    let c = Classic::fit_transform(
        det.model.as_ref(),
        &cfg,
        fit.as_ref().map(|(d, f)| (d, f.as_str())),
        args.batch_size,
        device,
    )?;
    if fit.is_some() {
        out.note(format!("fitted in {:.1} s", t0.elapsed().as_secs_f64()));
    }
    Ok(c)
}

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct DetectArgs {
    #[command(subcommand)]
    pub cmd: Option<DetectCmd>,
    /// Image files (png, jpg, bmp, gif), folders of them (recursive; symbolic links followed,
    /// each folder walked once), batch files or data specs; `-` reads one image from standard
    /// input.
    #[arg(required_unless_present = "files_from", value_name = "INPUT")]
    pub inputs: Vec<String>,
    /// Read more inputs from FILE (`-`: standard input), one per line (a CRLF line end counts as
    /// a newline), scored after the INPUT arguments in list order: for scans too long for a
    /// command line, e.g. `find DIR -name '*.png' | libre detect --files-from - ...`.
    #[arg(long, value_name = "FILE")]
    pub files_from: Option<String>,
    /// The --files-from entries end in NUL bytes (`find -print0`) instead of newlines.
    #[arg(long, requires = "files_from")]
    pub null: bool,
    /// A detector file from `libre calibrate`, or any libre checkpoint / zoo:NAME (then pass
    /// --threshold to flag).
    #[arg(long, required = true)]
    pub weights: Option<String>,
    /// Scores to print, comma-separated [default: every score the model gives]; the first
    /// flags unless the detector file names its own.
    #[arg(long)]
    pub score: Option<String>,
    /// Flag at this score threshold instead of the calibrated one (negative numbers too, e.g.
    /// `--threshold -12` for max-logit).
    #[arg(long, conflicts_with = "fpr", allow_negative_numbers = true)]
    pub threshold: Option<f64>,
    /// Re-threshold at this false-positive rate from the detector's stored calibration scores.
    #[arg(long)]
    pub fpr: Option<f64>,
    /// Output format: csv, jsonl or table [default: table on a terminal, csv otherwise; jsonl
    /// with --json].
    #[arg(long, value_parser = ["csv", "jsonl", "table"])]
    pub format: Option<String>,
    /// Write the rows to FILE (atomically) instead of stdout (`-`: stdout). FILE must not be an
    /// input, the --weights file or the --files-from list.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Exit with status 1 when any input is flagged.
    #[arg(long)]
    pub fail_on_detect: bool,
    /// Keep going past unreadable or wrongly sized images: a `skipped` row each, counted in the
    /// summary (default: stop with an error naming the file).
    #[arg(long)]
    pub skip_bad: bool,
    /// Resize (shorter side) and centre-crop images to the model's input size. Resampling
    /// weakens adversarial perturbations: scores on resized images understate them.
    #[arg(long)]
    pub resize: bool,
    /// Convert grey images to RGB (or RGB to grey) when the model takes the other.
    #[arg(long)]
    pub convert_channels: bool,
    /// MC samples of the forward [default: the detector's; 1 for a DNN]. A calibrated detector's
    /// threshold holds only at its own S: another S needs --threshold.
    #[arg(long)]
    pub mc_samples: Option<usize>,
    /// How a mean-field posterior draws in the parallel MC forward: weights (S weight samples
    /// shared by the batch, the reference's estimator) or local-reparam (each example's outputs
    /// drawn from their Gaussian where that is exact: Linear layers and convs on 1x1 maps; same
    /// per-example predictive, independent across examples, much faster for big last blocks).
    #[arg(long, default_value = "weights", value_name = "DRAWS", value_parser = super::parse_mc_draws)]
    pub mc_draws: libre::bayes::McDraws,
    /// Images per forward.
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// Seed of libtorch's generator (mean-field posteriors sample their weights).
    #[arg(long, default_value_t = 0)]
    pub seed: i64,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Numeric precision of the forward, f32 or bf16 [default: the one the detector was
    /// calibrated at; its threshold holds only there, so another needs --threshold].
    #[arg(long, value_parser = super::parse_precision)]
    pub precision: Option<libre::precision::Precision>,
    /// Run part K of N (K from 0): a contiguous range of the input batches. Needs --out; the
    /// part is written to OUT with `{shard}` replaced by K, or `.K-of-N` before the extension,
    /// plus a manifest; `libre detect merge` joins the parts. Without it, a Slurm job array's
    /// SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT are used.
    #[arg(long, value_name = "K/N")]
    pub shard: Option<String>,
    /// The shard count N when the index comes from the scheduler: SLURM_ARRAY_TASK_ID as is (so
    /// single tasks can be resubmitted) or a Kubernetes Indexed Job's JOB_COMPLETION_INDEX.
    #[arg(long, value_name = "N")]
    pub shard_count: Option<usize>,
}

#[derive(clap::Subcommand, Debug)]
pub enum DetectCmd {
    /// Join the parts of a sharded `libre detect` run (any order) into one file equal to the
    /// unsharded output; refuses missing or overlapping parts and parts of different runs.
    Merge {
        /// Part files (rows files written by `libre detect --shard`).
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// The merged file.
        #[arg(long)]
        out: PathBuf,
    },
}

/// The precision `libre detect` scores at: the one asked for, else the calibration's. A
/// calibrated threshold is refused at another precision (the scores move).
fn detect_precision(
    det: &Detector,
    asked: Option<Precision>,
    own_threshold: bool,
) -> anyhow::Result<Precision> {
    let calibrated = det.meta.as_ref().map(|m| m.precision);
    let p = asked.or(calibrated).unwrap_or_default();
    if let (Some(c), false) = (calibrated, own_threshold) {
        if c != p {
            anyhow::bail!(
                "--precision {p}: this detector was calibrated at {c} and its threshold holds only \
                 there; recalibrate with `libre calibrate --precision {p}`, or pass --threshold"
            );
        }
    }
    Ok(p)
}

/// A calibrated threshold holds at the S it was calibrated at: another `--mc-samples` moves the
/// scores (fewer samples, noisier spreads), so it is refused unless the user brings a threshold.
fn check_samples(det: &Detector, asked: Option<usize>, own_threshold: bool) -> anyhow::Result<()> {
    if let (Some(m), Some(s), false) = (&det.meta, asked, own_threshold) {
        if s != m.samples {
            anyhow::bail!(
                "--mc-samples {s}: this detector was calibrated at S = {} and its threshold (and \
                 --fpr's stored scores) hold only there; drop --mc-samples, recalibrate with \
                 `libre calibrate --mc-samples {s}`, or pass --threshold",
                m.samples
            );
        }
    }
    Ok(())
}

/// An output file path, checked before any work: not a directory (nor a name ending in `/`).
fn check_out_file(p: &Path) -> anyhow::Result<()> {
    if p.is_dir() || p.as_os_str().to_string_lossy().ends_with('/') {
        anyhow::bail!(
            "--out {}: is a directory; name a file, e.g. {}",
            p.display(),
            p.join("rows.csv").display()
        );
    }
    Ok(())
}

fn input_shape(d: &Detector) -> [usize; 3] {
    let c = d.model.config();
    [
        c.in_channels as usize,
        c.image_size as usize,
        c.image_size as usize,
    ]
}

pub fn run_calibrate(args: CalibrateArgs, out: Output) -> anyhow::Result<()> {
    if !args.out.to_string_lossy().ends_with(".safetensors") {
        anyhow::bail!(
            "--out must name a .safetensors detector file, got {}",
            args.out.display()
        );
    }
    if args.batch_size == 0 {
        anyhow::bail!("--batch-size must be at least 1");
    }
    // Checked before any work (the library checks again).
    if !(args.fpr > 0.0 && args.fpr < 1.0) {
        anyhow::bail!(
            "--fpr {}: the target false-positive rate must lie in (0, 1)",
            args.fpr
        );
    }
    check_detector_flags(&args)?;
    if let Some(f) = &args.fit_data {
        check_disjoint(f, &args.data, args.limit)?;
    }
    super::check_weights_arg(&args.weights)?;
    check_out_file(&args.out)?;
    let mut named: Vec<(&str, &Path)> = vec![("the --weights file", Path::new(&args.weights))];
    for (what, spec) in [
        ("the --data file", Some(&args.data)),
        ("the --fit-data file", args.fit_data.as_ref()),
        ("the --fit-adversarial file", args.fit_adversarial.as_ref()),
        ("the --fit-clean file", args.fit_clean.as_ref()),
    ] {
        if let Some(s) = spec {
            named.push((what, Path::new(s.as_str())));
        }
    }
    super::refuse_output_over_inputs("--out", &args.out, &named)?;
    // The calibration set is sized before any model loads or fits.
    let need = min_calibration_images(args.fpr);
    let ds = libre::data::open(&args.data, args.limit, &mut super::fetch_note(&out))?;
    if ds.len() < need {
        anyhow::bail!(
            "--data {}: {} clean image(s) cannot calibrate --fpr {}: the threshold must be one of \
             the clean scores, which takes at least {need} images (ceil(1 / fpr)); pass more \
             data, or a larger --fpr",
            args.data,
            ds.len(),
            args.fpr
        );
    }
    let device = super::resolve_device(&args.device, &out)?;
    let path = libre::zoo::resolve(&args.weights, &mut super::fetch_note(&out))?;
    super::refuse_output_over_inputs("--out", &args.out, &[("the --weights file", &path)])?;
    let requested = match args.detector.as_str() {
        "mc-dropout" | "bu" | "kd-bu" => None, // a DNN: the samples are dropout masks
        _ => args.mc_samples,
    };
    // Checked before a classic detector's fitting, which can take minutes.
    if args.precision != Precision::F32 && args.detector.parse::<ClassicKind>().is_ok() {
        anyhow::bail!(
            "--precision {}: classic detectors ({}) are fitted and scored at f32",
            args.precision,
            args.detector
        );
    }
    let mut det = Detector::load(&path, device, requested)?;
    det.model.set_mc_draws(args.mc_draws);
    build_detector(&args, &mut det, device, &out)?;
    let score: Score = match &args.score {
        Some(s) => s.parse()?,
        None if args.detector == "bu" => Score::SoftmaxVariance,
        None => det.default_score(),
    };
    det.check_score(score)?;
    det.set_precision(args.precision)?;
    super::note_precision(args.precision, device, &out);
    let want = input_shape(&det);
    let pb = out.progress(ds.len() as u64, "calibrate");
    let mut clean = Vec::with_capacity(ds.len());
    let t0 = std::time::Instant::now();
    for (bi, s) in (0..ds.len()).step_by(args.batch_size).enumerate() {
        let b = input::data_chunk(&ds, s, (s + args.batch_size).min(ds.len()), want)?;
        let (x, _) = b.tensor(want).expect("data batches are never empty");
        tch::manual_seed(args.seed.wrapping_add(bi as i64));
        let (_, sc) = det.score(&x.to_device(device), &[score])?;
        clean.extend(Vec::<f64>::try_from(
            sc[0].to_kind(tch::Kind::Double).to_device(tch::Device::Cpu),
        )?);
        pb.inc(x.size()[0] as u64);
    }
    pb.finish_and_clear();
    let cal = libre::detect::calibrate(&clean, args.fpr)?;
    let mut sorted = clean.clone();
    sorted.sort_by(|a, b| a.partial_cmp(b).expect("finite, checked by calibrate"));
    let meta = DetectorMeta {
        format: DETECTOR_FORMAT,
        score,
        samples: det.samples,
        calibration: cal.clone(),
        data: args.data.clone(),
        weights: args.weights.clone(),
        seed: args.seed,
        libre_version: libre::VERSION.to_string(),
        calibration_scores: sorted,
        mc_dropout: det.model.mc_dropout().cloned(),
        classic: det.classic.as_ref().map(|c| c.meta.clone()),
        precision: args.precision,
    };
    // The file keeps the float32 weights; the precision is in `meta`.
    det.model.set_precision(Precision::F32)?;
    det.save(&args.out, &meta)?;
    let secs = t0.elapsed().as_secs_f64();
    let data = json!({
        "out": args.out, "score": score, "samples": det.samples, "mc_draws": args.mc_draws,
        "precision": args.precision,
        "threshold": cal.threshold,
        "target_fpr": cal.target_fpr, "achieved_fpr": cal.achieved_fpr,
        "achieved_fpr_ci95": cal.achieved_fpr_ci95, "n": cal.n, "data": args.data,
        "seconds": secs,
    });
    out.result(data, || {
        format!(
            "detector {} ({} on {} images of {}, S = {}):\n  threshold {:.6}  target FPR {:.3}  \
             achieved {:.4} (95% CI {:.4}-{:.4})\n",
            args.out.display(),
            score,
            cal.n,
            args.data,
            det.samples,
            cal.threshold,
            cal.target_fpr,
            cal.achieved_fpr,
            cal.achieved_fpr_ci95.0,
            cal.achieved_fpr_ci95.1
        )
    });
    Ok(())
}

#[derive(Clone, Copy, PartialEq)]
enum Format {
    Csv,
    Jsonl,
    Table,
}

fn format_name(f: Format) -> &'static str {
    match f {
        Format::Csv => "csv",
        Format::Jsonl => "jsonl",
        Format::Table => "table",
    }
}

/// One output row.
struct Row {
    source: String,
    class: Option<i64>,
    pred: Option<i64>,
    confidence: Option<f64>,
    scores: Vec<f64>,
    flagged: Option<bool>,
    status: String,
}

struct RowWriter {
    fmt: Format,
    w: Box<dyn Write>,
    header: Vec<String>,
    score_names: Vec<String>,
}

/// One CSV record (quoted as needed) with its line end.
fn csv_line(cells: &[String]) -> anyhow::Result<Vec<u8>> {
    let mut c = csv::Writer::from_writer(Vec::new());
    c.write_record(cells)?;
    c.into_inner()
        .map_err(|e| anyhow::anyhow!("formatting a CSV row: {e}"))
}

impl RowWriter {
    fn new(fmt: Format, w: Box<dyn Write>, score_names: Vec<String>) -> anyhow::Result<Self> {
        let mut header: Vec<String> = ["source", "class", "pred", "confidence"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        header.extend(score_names.iter().cloned());
        header.push("flagged".into());
        header.push("status".into());
        let mut rw = RowWriter {
            fmt,
            w,
            header,
            score_names,
        };
        match fmt {
            Format::Csv => {
                let line = csv_line(&rw.header)?;
                rw.w.write_all(&line)?;
            }
            Format::Table => {
                let line = rw.table_line(&rw.header.clone());
                writeln!(rw.w, "{line}")?;
            }
            Format::Jsonl => {}
        }
        Ok(rw)
    }

    fn table_line(&self, cells: &[String]) -> String {
        let n = cells.len();
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i == 0 {
                    format!("{c:<32}")
                } else if i == n - 1 {
                    c.clone()
                } else {
                    format!("{c:>12}")
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn write(&mut self, r: &Row) -> anyhow::Result<()> {
        let opt = |v: Option<String>| v.unwrap_or_default();
        let cells: Vec<String> = {
            let mut c = vec![
                r.source.clone(),
                opt(r.class.map(|v| v.to_string())),
                opt(r.pred.map(|v| v.to_string())),
                opt(r.confidence.map(|v| format!("{v:.6}"))),
            ];
            c.extend(r.scores.iter().map(|v| format!("{v:.6e}")));
            c.push(opt(r.flagged.map(|f| (f as u8).to_string())));
            c.push(r.status.clone());
            c
        };
        match self.fmt {
            Format::Csv => {
                let line = csv_line(&cells)?;
                self.w.write_all(&line)?;
            }
            Format::Table => {
                let line = self.table_line(&cells);
                writeln!(self.w, "{line}")?;
            }
            Format::Jsonl => {
                let mut m = Map::new();
                m.insert("source".into(), json!(r.source));
                m.insert("class".into(), json!(r.class));
                m.insert("pred".into(), json!(r.pred));
                m.insert("confidence".into(), json!(r.confidence));
                let sc: Map<String, Value> = self
                    .score_names
                    .iter()
                    .zip(&r.scores)
                    .map(|(n, v)| (n.clone(), json!(v)))
                    .collect();
                m.insert("scores".into(), Value::Object(sc));
                m.insert("flagged".into(), json!(r.flagged));
                m.insert("status".into(), json!(r.status));
                writeln!(self.w, "{}", Value::Object(m))?;
            }
        }
        Ok(())
    }
}

fn run_merge(files: &[PathBuf], dest: &Path, out: Output) -> anyhow::Result<()> {
    check_out_file(dest)?;
    // Each part is a rows file and its manifest (either may be named).
    let rows: Vec<PathBuf> = files
        .iter()
        .map(|f| match f.to_string_lossy().strip_suffix(".part.json") {
            Some(r) => PathBuf::from(r),
            None => f.clone(),
        })
        .collect();
    let manifests: Vec<PathBuf> = rows.iter().map(|f| parts::manifest_path(f)).collect();
    let named: Vec<(&str, &Path)> = rows
        .iter()
        .map(|f| ("a part file", f.as_path()))
        .chain(manifests.iter().map(|m| ("a part manifest", m.as_path())))
        .collect();
    super::refuse_output_over_inputs("--out", dest, &named)?;
    let m = libre::detect::parts::merge(files, dest)?;
    let c = m.counts;
    out.result(
        json!({ "out": dest, "parts": m.parts, "n": c.n, "flagged": c.flagged,
                "skipped": c.skipped }),
        || {
            format!(
                "merged {} parts into {}: {} inputs, {} flagged, {} skipped\n",
                m.parts,
                dest.display(),
                c.n,
                c.flagged,
                c.skipped
            )
        },
    );
    Ok(())
}

pub fn run_detect(args: DetectArgs, out: Output) -> anyhow::Result<()> {
    if let Some(DetectCmd::Merge { files, out: dest }) = &args.cmd {
        return run_merge(files, dest, out);
    }
    // clap requires --weights unless a subcommand (merge) ran above.
    let Some(weights) = args.weights.clone() else {
        anyhow::bail!("--weights is required");
    };
    super::check_weights_arg(&weights)?;
    if args.batch_size == 0 {
        anyhow::bail!("--batch-size must be at least 1");
    }
    if let Some(t) = args.threshold {
        if !t.is_finite() {
            anyhow::bail!("--threshold {t}: must be a finite number");
        }
    }
    let shard = Shard::from_args(args.shard.as_deref(), args.shard_count, &mut |m| {
        out.note(m)
    })?;
    // `--out -` is standard output.
    let out_arg: Option<PathBuf> = args.out.clone().filter(|p| p.as_os_str() != input::STDIN);
    if shard.is_some() && args.out.is_some() && out_arg.is_none() {
        anyhow::bail!(
            "--out - (standard output) cannot be sharded: each part writes its own file; name a \
             file"
        );
    }
    // A part's file, checked before any work.
    let out_path: Option<PathBuf> = match (&shard, &out_arg) {
        (Some(s), Some(p)) => Some(parts::part_path(p, *s)),
        (Some(s), None) => anyhow::bail!(
            "shard {s}: a sharded run needs --out (each part writes its own file and a manifest \
             that `libre detect merge` checks)"
        ),
        (None, p) => p.clone(),
    };
    if let Some(p) = &out_path {
        check_out_file(p)?;
        // Inputs named on the command line, checked before the model loads; the files of
        // folders and lists once they are resolved.
        let mut named: Vec<(&str, &Path)> = args
            .inputs
            .iter()
            .map(|s| Path::new(s.as_str()))
            .filter(|p| p.exists())
            .map(|p| ("an input", p))
            .collect();
        named.push(("the --weights file", Path::new(weights.as_str())));
        if let Some(f) = args.files_from.as_deref().filter(|f| *f != input::STDIN) {
            named.push(("the --files-from list", Path::new(f)));
        }
        super::refuse_output_over_inputs("--out", p, &named)?;
    }
    if shard.is_some() && args.inputs.iter().any(|s| s == input::STDIN) {
        anyhow::bail!(
            "input '-' (standard input) cannot be sharded: the parts run as separate processes; \
             save the image to a file"
        );
    }
    if args.files_from.as_deref() == Some(input::STDIN)
        && args.inputs.iter().any(|s| s == input::STDIN)
    {
        anyhow::bail!(
            "--files-from - and input '-' both read standard input: save the image or the list \
             to a file"
        );
    }
    // Read before the model loads, so a bad list costs nothing.
    let list = match &args.files_from {
        Some(f) => {
            let l = input::InputList::read(f, args.null)?;
            if l.entries.is_empty() && args.inputs.is_empty() {
                anyhow::bail!(
                    "no inputs: the list {} is empty",
                    if f == input::STDIN {
                        "on standard input"
                    } else {
                        f
                    }
                );
            }
            Some(l)
        }
        None => None,
    };
    // A listed path (a batch file, an image) is an input too; the files of listed folders are
    // checked once resolved.
    if let (Some(p), Some(l)) = (out_path.as_ref().filter(|p| p.exists()), &list) {
        if let Some((n, e)) = l
            .entries
            .iter()
            .find(|(_, e)| super::same_file(p, Path::new(e.as_str())))
        {
            anyhow::bail!(
                "--out {}: that is line {n} of the --files-from list ({e}), an input, which \
                 would be overwritten; choose another output path",
                p.display()
            );
        }
    }
    if shard.is_some() && args.format.as_deref() == Some("table") {
        anyhow::bail!("--format table cannot be merged: sharded runs write csv or jsonl");
    }
    let device = super::resolve_device(&args.device, &out)?;
    let path = libre::zoo::resolve(&weights, &mut super::fetch_note(&out))?;
    if let Some(p) = &out_path {
        super::refuse_output_over_inputs("--out", p, &[("the --weights file", &path)])?;
    }
    let mut det = Detector::load(&path, device, args.mc_samples)?;
    det.model.set_mc_draws(args.mc_draws);
    check_samples(&det, args.mc_samples, args.threshold.is_some())?;
    let precision = detect_precision(&det, args.precision, args.threshold.is_some())?;
    det.set_precision(precision)?;
    super::note_precision(precision, device, &out);
    let shown: Vec<Score> = match &args.score {
        Some(s) => scores::parse_list(s)?,
        // The detector's own score first (its first column is what flags).
        None => {
            let mut v = det.available_scores();
            if let Some(m) = &det.meta {
                v.retain(|s| *s != m.score);
                v.insert(0, m.score);
            }
            v
        }
    };
    for s in &shown {
        det.check_score(*s)?;
    }
    // The flagging score: the detector's own, else the first shown.
    let flag_score = det.meta.as_ref().map(|m| m.score).unwrap_or(shown[0]);
    let mut computed = shown.clone();
    if !computed.contains(&flag_score) {
        computed.push(flag_score);
    }
    let flag_idx = computed
        .iter()
        .position(|s| *s == flag_score)
        .expect("pushed");
    let threshold = match (args.threshold, args.fpr, &det.meta) {
        (Some(t), _, _) => Some(t),
        (None, Some(f), Some(m)) => Some(m.recalibrate(f)?.threshold),
        (None, Some(_), None) => anyhow::bail!(
            "--fpr needs a detector file from `libre calibrate` ({weights} has no calibration); \
             or pass --threshold"
        ),
        (None, None, Some(m)) => Some(m.calibration.threshold),
        (None, None, None) => {
            out.note(format!(
                "{weights} is not calibrated: no input is flagged (run `libre calibrate`, or \
                 pass --threshold)"
            ));
            None
        }
    };
    if args.fail_on_detect && threshold.is_none() {
        anyhow::bail!("--fail-on-detect needs a threshold: a calibrated detector or --threshold");
    }
    let mut segs = input::resolve(&args.inputs, &mut super::fetch_note(&out))?;
    if let Some(l) = list {
        l.resolve_into(&mut segs, &mut super::fetch_note(&out))?;
    }
    if let Some(p) = out_path.as_ref().filter(|p| p.exists()) {
        for seg in &segs {
            if let input::Segment::Images(files) = seg {
                if let Some(f) = files.iter().find(|f| super::same_file(p, f)) {
                    anyhow::bail!(
                        "--out {}: that is the input image {}, which would be overwritten; \
                         choose another output path",
                        p.display(),
                        f.display()
                    );
                }
            }
        }
    }
    let all = input::chunks(&segs, args.batch_size);
    let batches = match shard {
        Some(s) => s.range(all.len()),
        None => 0..all.len(),
    };
    let plan = &all[batches.clone()];
    let total: usize = plan.iter().map(|c| c.end - c.start).sum();
    if let Some(s) = shard {
        out.note(format!(
            "shard {s}: batches {}..{} of {} ({total} inputs) -> {}",
            batches.start,
            batches.end,
            all.len(),
            out_path.as_ref().expect("checked above").display()
        ));
    }
    let want = input_shape(&det);
    let fmt = match args.format.as_deref() {
        Some("csv") => Format::Csv,
        Some("jsonl") => Format::Jsonl,
        Some("table") => Format::Table,
        _ if out.json => Format::Jsonl,
        _ if out_path.is_none() && std::io::stdout().is_terminal() => Format::Table,
        _ => Format::Csv,
    };
    // --out: rows go to a temporary file beside it, renamed into place only when complete.
    let mut tmp = match &out_path {
        Some(p) => {
            let dir = p
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            Some(
                tempfile::Builder::new()
                    .prefix(".libre-detect-")
                    .tempfile_in(dir)
                    .with_context(|| format!("creating a temporary file in {}", dir.display()))?,
            )
        }
        None => None,
    };
    let _cleanup = tmp.as_ref().map(|t| libre::cleanup::track(t.path()));
    let sink: Box<dyn Write> = match &tmp {
        Some(t) => Box::new(std::io::BufWriter::new(t.reopen()?)),
        None => Box::new(std::io::BufWriter::new(std::io::stdout())),
    };
    let names: Vec<String> = shown.iter().map(|s| s.to_string()).collect();
    let mut writer = RowWriter::new(fmt, sink, names)?;
    let policy = ImagePolicy {
        resize: args.resize,
        convert_channels: args.convert_channels,
    };
    if args.resize {
        out.note("--resize: images are resampled, which weakens adversarial perturbations");
    }
    let pb = out.progress(total as u64, "detect");
    let (mut n, mut flagged, mut skipped) = (0usize, 0usize, 0usize);
    let t0 = std::time::Instant::now();
    let res = input::stream(&segs, plan, want, policy, &mut |chunk, b| {
        let mut rows: Vec<Option<Row>> = (0..b.sources.len()).map(|_| None).collect();
        for (i, img) in b.images.iter().enumerate() {
            if let Err(e) = img {
                if !args.skip_bad {
                    return Err(libre::Error::invalid(format!(
                        "{e} (pass --skip-bad to continue past bad inputs)"
                    )));
                }
                rows[i] = Some(Row {
                    source: b.sources[i].clone(),
                    class: None,
                    pred: None,
                    confidence: None,
                    scores: vec![f64::NAN; shown.len()],
                    flagged: None,
                    status: format!("skipped: {e}"),
                });
            }
        }
        if let Some((x, idx)) = b.tensor(want) {
            // Seeded by the global batch index: a shard draws what the unsharded run draws.
            tch::manual_seed(args.seed.wrapping_add(chunk.index as i64));
            let (pred, sc) = det.score(&x.to_device(device), &computed)?;
            let cls = Vec::<i64>::try_from(pred.class.to_device(tch::Device::Cpu))?;
            let conf = Vec::<f64>::try_from(
                pred.confidence
                    .to_kind(tch::Kind::Double)
                    .to_device(tch::Device::Cpu),
            )?;
            let vals: Vec<Vec<f64>> = sc
                .iter()
                .map(|t| {
                    Vec::<f64>::try_from(t.to_kind(tch::Kind::Double).to_device(tch::Device::Cpu))
                })
                .collect::<Result<_, _>>()?;
            for (j, &i) in idx.iter().enumerate() {
                let fl = threshold.map(|t| vals[flag_idx][j] >= t);
                rows[i] = Some(Row {
                    source: b.sources[i].clone(),
                    class: b.labels.as_ref().map(|l| l[i]),
                    pred: Some(cls[j]),
                    confidence: Some(conf[j]),
                    scores: (0..shown.len()).map(|k| vals[k][j]).collect(),
                    flagged: fl,
                    status: "ok".into(),
                });
            }
        }
        for r in rows.into_iter().flatten() {
            n += 1;
            if r.status != "ok" {
                skipped += 1;
            }
            if r.flagged == Some(true) {
                flagged += 1;
            }
            writer
                .write(&r)
                .map_err(|e| libre::Error::invalid(format!("writing rows: {e:#}")))?;
        }
        pb.set_position(n as u64);
        Ok(())
    });
    pb.finish_and_clear();
    if let Err(e) = res {
        let ae = anyhow::Error::from(e);
        if tmp.is_none() && format!("{ae:#}").contains("Broken pipe") {
            return Ok(()); // the reader went away (e.g. `| head`): stop quietly like other tools
        }
        return Err(ae);
    }
    writer.w.flush().or_else(|e| {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            Ok(())
        } else {
            Err(e)
        }
    })?;
    drop(writer);
    if let (Some(t), Some(p)) = (tmp.take(), &out_path) {
        // A stale manifest must never vouch for new rows: it goes first, and comes back last.
        let mp = parts::manifest_path(p);
        if shard.is_some() && mp.exists() {
            std::fs::remove_file(&mp).with_context(|| format!("removing {}", mp.display()))?;
        }
        t.persist(p)
            .map_err(|e| anyhow::anyhow!("moving the rows into {}: {}", p.display(), e.error))?;
        let _ = libre::cache::make_public(p);
        if let Some(s) = shard {
            let rows_start: usize = all[..batches.start].iter().map(|c| c.end - c.start).sum();
            let mut run = std::collections::BTreeMap::new();
            let weights_sha = libre::cache::sha256_file(&path)?;
            let settings = json!({
                "inputs": args.inputs, "files_from": args.files_from,
                "inputs_digest": input::digest(&segs),
                "weights_sha256": weights_sha,
                "scores": shown, "flag_score": flag_score, "threshold": threshold,
                "samples": det.samples, "mc_draws": args.mc_draws, "precision": precision,
                "batch_size": args.batch_size, "seed": args.seed,
                "skip_bad": args.skip_bad, "resize": args.resize,
                "convert_channels": args.convert_channels, "format": format_name(fmt),
            });
            if let Value::Object(m) = settings {
                run.extend(m);
            }
            let man = parts::PartManifest {
                format: parts::PART_FORMAT.into(),
                libre_version: libre::VERSION.into(),
                shard: s,
                batches: (batches.start, batches.end),
                total_batches: all.len(),
                rows: (rows_start, rows_start + total),
                total_inputs: all.iter().map(|c| c.end - c.start).sum(),
                run,
                rows_file: p
                    .file_name()
                    .map(|f| f.to_string_lossy().to_string())
                    .unwrap_or_default(),
                rows_sha256: libre::cache::sha256_file(p)?,
                counts: parts::Counts {
                    n,
                    flagged,
                    skipped,
                },
            };
            libre::cache::write_atomic(&mp, &serde_json::to_vec_pretty(&man)?)?;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let rate = (n - skipped) as f64 / secs.max(1e-9);
    let summary = json!({
        "n": n, "flagged": flagged, "skipped": skipped, "score": flag_score,
        "threshold": threshold, "samples": det.samples, "mc_draws": args.mc_draws,
        "precision": precision, "images_per_s": rate, "seconds": secs,
        "out": out_path, "shard": shard,
    });
    let inputs = if n == 1 { "input" } else { "inputs" };
    out.note(format!(
        "{n} {inputs}: {flagged} flagged ({} >= {}), {skipped} skipped; {rate:.1} images/s (S = {})",
        flag_score,
        threshold
            .map(|t| format!("{t:.6}"))
            .unwrap_or_else(|| "-".into()),
        det.samples
    ));
    // --json: the summary is the final {"type":"result"} line (after any JSON rows).
    if out.json {
        out.result(summary, String::new);
    }
    if args.fail_on_detect && flagged > 0 {
        return Err(
            CheckFailed(format!("{flagged} of {n} {inputs} flagged as adversarial")).into(),
        );
    }
    Ok(())
}
