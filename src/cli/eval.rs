//! `libre eval`: accuracy, top-5, NLL, Brier and ECE of a DNN or its Bayes ensemble.

use super::args::{DeviceArg, McDrawsArg, ModelSource};
use super::Output;
use libre::accuracy::{self, EvalOptions};
use libre::bayes::ForwardMode;
use serde_json::json;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub source: ModelSource,
    /// Data set spec (mnist:test, folder:DIR, FILE.safetensors, ...).
    #[arg(long)]
    pub data: String,
    /// Use only the first N examples.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Number of MC samples of the Bayes ensemble (default: the checkpoint's S; a DNN: 1).
    #[arg(long, conflicts_with = "deterministic")]
    pub mc_samples: Option<usize>,
    #[command(flatten)]
    pub mc_draws: McDrawsArg,
    /// Evaluate the posterior mean (the DNN) instead of the ensemble.
    #[arg(long)]
    pub deterministic: bool,
    /// Also report accuracy and NLL versus the number of MC samples (1, 2, 5, 10, 20, ..., S).
    #[arg(long)]
    pub curve: bool,
    /// Images per forward.
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    /// Seed of libtorch's generator (mean-field posteriors sample their weights).
    #[arg(long, default_value_t = 0)]
    pub seed: i64,
    #[command(flatten)]
    pub device: DeviceArg,
    /// Numeric precision of the forward: f32, or bf16 (bfloat16 weights and activations, float32
    /// scores; large matmuls about 3x faster on CPUs with AMX / AVX512-BF16; docs/design.md
    /// section 15).
    #[arg(long, default_value = "f32", value_parser = super::parse_precision)]
    pub precision: libre::runtime::precision::Precision,
}

pub fn run(args: Args, out: Output) -> anyhow::Result<()> {
    let device = super::resolve_device(&args.device.device, &out)?;
    let path = libre::weights::zoo::resolve(&args.source.weights, &mut super::fetch_note(&out))?;
    let (mut model, _meta) =
        libre::weights::checkpoint::load_or_build(&path, args.source.model.as_deref(), device)?;
    model.set_mc_draws(args.mc_draws.mc_draws);
    model.set_precision(args.precision)?;
    super::note_precision(args.precision, device, &out);
    let ds = libre::data::open(&args.data, args.limit, &mut super::fetch_note(&out))?;
    let mode = if args.deterministic {
        ForwardMode::Deterministic
    } else {
        // A DNN gives one prediction: more samples are an error naming the fix, not a
        // "Bayes ensemble" of identical copies.
        let s = libre::models::samples_for(model.as_ref(), args.mc_samples)?;
        libre::models::mode_for(model.as_ref(), s)
    };
    let curve = if args.curve {
        accuracy::default_curve(mode.samples())
    } else {
        vec![]
    };
    let opts = EvalOptions {
        mode: mode.clone(),
        batch_size: args.batch_size,
        curve,
        seed: args.seed,
    };
    let pb = out.progress(ds.len() as u64, "eval");
    let res = accuracy::evaluate(model.as_ref(), &ds, &opts, &mut |n| {
        pb.set_position(n as u64)
    })?;
    pb.finish_and_clear();
    let m = &res.metrics;
    let mode_name = match &mode {
        ForwardMode::ParallelMc { samples } => match args.mc_draws.mc_draws {
            libre::bayes::McDraws::Weights => format!("Bayes ensemble, S = {samples}"),
            d => format!("Bayes ensemble, S = {samples}, {d} draws"),
        },
        _ => "deterministic".to_string(),
    };
    let mode_name = match args.precision {
        libre::runtime::precision::Precision::F32 => mode_name,
        p => format!("{mode_name}, {p}"),
    };
    let data = json!({
        "weights": args.source.weights, "data": args.data, "n": m.n, "mode": mode_name,
        "mc_draws": args.mc_draws.mc_draws, "precision": args.precision,
        "top1": m.top1, "top5": m.top5, "nll": m.nll, "brier": m.brier, "ece": m.ece,
        "curve": res.curve, "seconds": res.seconds, "device": libre::runtime::device::name(device),
    });
    out.result(data, || {
        let mut s = format!(
            "{} on {} ({} images, {mode_name})\n  top-1 {:.2}%  top-5 {:.2}%  NLL {:.4}  Brier {:.4}  ECE {:.4}  ({:.1} s)\n",
            args.source.weights, args.data, m.n, 100.0 * m.top1, 100.0 * m.top5, m.nll, m.brier, m.ece, res.seconds
        );
        if !res.curve.is_empty() {
            s += "  S      top-1     NLL\n";
            for c in &res.curve {
                s += &format!("  {:<6} {:>6.2}%  {:.4}\n", c.samples, 100.0 * c.top1, c.nll);
            }
        }
        s
    });
    Ok(())
}
