//! `libre convert`: turn chosen layers of a pretrained model into a variational posterior whose
//! mean is the pretrained weight (docs/design.md section 2), and save it as a checkpoint.

use super::args::ModelSource;
use super::Output;
use libre::bayes::{Family, LayerSelection, PosteriorConfig};
use serde_json::json;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub source: ModelSource,
    /// mean-field, ensemble or low-rank; `point` converts back to a deterministic model.
    #[arg(long, required_unless_present = "list_layers")]
    pub posterior: Option<String>,
    /// all, last-block, a layer path (layer4.2), a comma-separated list or a glob (layer4.*).
    #[arg(long, default_value = "all")]
    pub layers: String,
    /// Ensemble members / low-rank components / default MC samples (S >= 1).
    #[arg(long, default_value_t = 20)]
    pub mc_samples: usize,
    /// Rank of the low-rank posterior.
    #[arg(long)]
    pub rank: Option<usize>,
    /// Seed of the initial spread of the posterior (ensemble members, low-rank factors).
    #[arg(long, default_value_t = 0)]
    pub seed: i64,
    /// Output checkpoint (.safetensors).
    #[arg(long, required_unless_present = "list_layers")]
    pub out: Option<PathBuf>,
    /// List the convertible layer paths and exit.
    #[arg(long)]
    pub list_layers: bool,
}

pub fn run(args: Args, out: Output) -> anyhow::Result<()> {
    let path = libre::weights::zoo::resolve(&args.source.weights, &mut super::fetch_note(&out))?;
    let device = tch::Device::Cpu;
    let (mut model, _) =
        libre::weights::checkpoint::load_or_build(&path, args.source.model.as_deref(), device)?;
    if args.list_layers {
        let fams = model.layer_families();
        let data = json!({ "layers": fams.iter().map(|(p, f)| json!({"path": p, "family": f})).collect::<Vec<_>>(),
                           "last_block": model.last_block() });
        out.result(data, || {
            fams.iter().map(|(p, f)| format!("{p}\t{f:?}\n")).collect()
        });
        return Ok(());
    }
    let (posterior, dest) = (
        args.posterior.clone().expect("clap requires --posterior"),
        args.out.clone().expect("clap requires --out"),
    );
    if !dest.to_string_lossy().ends_with(".safetensors") {
        anyhow::bail!(
            "--out must name a .safetensors file, got {}",
            dest.display()
        );
    }
    let family: Family = posterior.parse()?;
    let converted = if family == Family::Point {
        model.to_deterministic()?;
        vec![]
    } else {
        let sel: LayerSelection = args.layers.parse()?;
        let mut pc = PosteriorConfig::new(family, args.mc_samples);
        if let Some(r) = args.rank {
            pc.rank = r;
        }
        pc.validate()?;
        tch::manual_seed(args.seed);
        model.convert(&sel, &pc)?
    };
    libre::weights::checkpoint::save(&dest, model.as_ref())?;
    let data = json!({ "out": dest, "posterior": posterior, "converted": converted,
                       "samples": args.mc_samples });
    out.result(data, || {
        format!(
            "{} -> {} ({}: {} layer(s): {})\n",
            args.source.weights,
            dest.display(),
            posterior,
            converted.len(),
            converted.join(", ")
        )
    });
    Ok(())
}
