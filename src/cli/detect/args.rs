//! The flags of `libre calibrate` and `libre detect` (and `libre detect merge`), with their help
//! text; `--device` and `--mc-draws` are the shared ones of [`crate::cli::args`].

use crate::cli::args::{DeviceArg, McDrawsArg};
use std::path::PathBuf;

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
    #[command(flatten)]
    pub mc_draws: McDrawsArg,
    /// Images per forward.
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    /// Seed of libtorch's generator (mean-field posteriors sample their weights).
    #[arg(long, default_value_t = 0)]
    pub seed: i64,
    /// The detector file to write (.safetensors; the model plus the calibration).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub device: DeviceArg,
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
    #[arg(long, default_value = "f32", value_parser = crate::cli::parse_precision)]
    pub precision: libre::runtime::precision::Precision,
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
    #[command(flatten)]
    pub mc_draws: McDrawsArg,
    /// Images per forward.
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// Seed of libtorch's generator (mean-field posteriors sample their weights).
    #[arg(long, default_value_t = 0)]
    pub seed: i64,
    #[command(flatten)]
    pub device: DeviceArg,
    /// Numeric precision of the forward, f32 or bf16 [default: the one the detector was
    /// calibrated at; its threshold holds only there, so another needs --threshold].
    #[arg(long, value_parser = crate::cli::parse_precision)]
    pub precision: Option<libre::runtime::precision::Precision>,
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
