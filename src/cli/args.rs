//! Flags several commands share, defined once and flattened into each command's arguments with
//! `#[command(flatten)]` (the pattern of `train::Common`), so that their names, defaults and help
//! cannot drift apart between commands.

/// `--device`.
#[derive(clap::Args, Debug, Clone)]
pub struct DeviceArg {
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
}

/// `--mc-draws`.
#[derive(clap::Args, Debug, Clone)]
pub struct McDrawsArg {
    /// How a mean-field posterior draws in the parallel MC forward: weights (S weight samples
    /// shared by the batch, the reference's estimator) or local-reparam (each example's outputs
    /// drawn from their Gaussian where that is exact: Linear layers and convs on 1x1 maps; same
    /// per-example predictive, independent across examples, much faster for big last blocks).
    #[arg(long = "mc-draws", default_value = "weights", value_name = "DRAWS", value_parser = super::parse_mc_draws)]
    pub mc_draws: libre::bayes::McDraws,
}

/// `--weights` and `--model`: the model a command loads.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelSource {
    /// The model: a libre checkpoint (.safetensors, e.g. RUN_DIR/model.safetensors) or
    /// zoo:NAME; with --model, a plain state_dict (e.g. one `libre import` wrote).
    #[arg(long)]
    pub weights: String,
    /// Read --weights, a plain state_dict (.pt/.pth, .safetensors without libre metadata), as
    /// this architecture: lenet5, digitcnn, resnet18, resnet34, resnet50; ignored for a libre
    /// checkpoint, which names its own.
    #[arg(long, value_name = "ARCH")]
    pub model: Option<String>,
}
