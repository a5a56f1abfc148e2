//! `libre metrics`: detection metrics from a CSV of scores (issue "Metrics, tables, plots").
use super::Output;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    rest: Vec<String>,
}

pub fn run(_args: Args, _out: Output) -> anyhow::Result<()> {
    Err(super::not_landed(
        "metrics",
        "Metrics, tables, plots and reports",
    ))
}
