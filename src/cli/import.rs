//! `libre import`: PyTorch checkpoints (zip or legacy `torch.save`), safetensors, `.npz` and
//! `.npy` files to a safetensors file with the original tensor names and dtypes, without Python
//! (docs/design.md section 12; the library's [`libre::weights::import`] does
//! the work). The output is written atomically: on any error nothing is written.
use super::Output;
use anyhow::bail;
use libre::weights::import::{load_state_dict_with, ImportOptions, StateDict};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

/// Up to this many tensors the table is shown without --verbose.
const FEW: usize = 20;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The checkpoint: .pt/.pth (zip or legacy torch.save), .safetensors, .npz or .npy.
    #[arg(value_name = "FILE")]
    input: PathBuf,
    /// Where to write the tensors (safetensors).
    #[arg(long, value_name = "FILE.safetensors")]
    out: PathBuf,
    /// Drop this prefix from the names that have it (e.g. `module.` from nn.DataParallel).
    #[arg(long, value_name = "PREFIX")]
    strip_prefix: Option<String>,
    /// Take the state_dict from this key of a checkpoint dict (`state_dict`, `model`; nested
    /// keys separated by `/`). Without it a checkpoint with exactly one dict of tensors is
    /// unwrapped automatically.
    #[arg(long, value_name = "KEY")]
    key: Option<String>,
    /// Write a full libre checkpoint of this architecture (lenet5, digitcnn, resnet18, resnet34,
    /// resnet50; every tensor must match the model's, by name and shape) instead of plain
    /// tensors: eval, attack, convert and detect then take it without --model.
    #[arg(long, value_name = "ARCH")]
    model: Option<String>,
    /// Print the table of names, shapes and dtypes even for many tensors.
    #[arg(long, short)]
    verbose: bool,
}

fn shape_str(shape: &[i64]) -> String {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("[{}]", dims.join(", "))
}

fn dtype_name(t: &tch::Tensor) -> &'static str {
    libre::weights::import::DType::from_kind(t.kind()).map_or("unknown", |d| d.name())
}

fn table(sd: &StateDict) -> String {
    let rows: Vec<[String; 3]> = sd
        .iter()
        .map(|(n, t)| {
            [
                n.to_string(),
                shape_str(&t.size()),
                dtype_name(t).to_string(),
            ]
        })
        .collect();
    let header = ["name".to_string(), "shape".to_string(), "dtype".to_string()];
    let mut w = [0usize; 3];
    for r in rows.iter().chain(std::iter::once(&header)) {
        for i in 0..3 {
            w[i] = w[i].max(r[i].len());
        }
    }
    let mut s = String::new();
    for r in std::iter::once(&header).chain(rows.iter()) {
        s += &format!("{:<a$}  {:<b$}  {}\n", r[0], r[1], r[2], a = w[0], b = w[1]);
    }
    s
}

pub fn run(args: Args, out: Output) -> anyhow::Result<()> {
    if args.out.extension().and_then(|e| e.to_str()) != Some("safetensors") {
        bail!(
            "--out {}: the output must be a .safetensors file",
            args.out.display()
        );
    }
    let same = match (args.input.canonicalize(), args.out.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same {
        bail!(
            "--out {} is the input file; choose another path",
            args.out.display()
        );
    }
    let opts = ImportOptions {
        key: args.key.clone(),
        strip_prefix: args.strip_prefix.clone(),
    };
    let sd = load_state_dict_with(&args.input, &opts)?;
    let format = sd.format;
    if let Some(k) = &sd.source_key {
        if args.key.is_none() {
            out.note(format!(
                "libre: the tensors are under the key {k:?} (unwrapped; --key {k})"
            ));
        }
    }
    if let Some(p) = &args.strip_prefix {
        if sd.stripped == 0 {
            out.note(format!(
                "libre: warning: no tensor name starts with {p:?}; nothing stripped"
            ));
        }
    }
    let source = args
        .input
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    meta.insert("libre_source".to_string(), source);
    if let Some(f) = format {
        meta.insert("libre_source_format".to_string(), f.name().to_string());
    }
    meta.insert("libre_version".to_string(), libre::VERSION.to_string());
    match &args.model {
        Some(arch) => {
            let tensors: Vec<(String, tch::Tensor)> = sd
                .iter()
                .map(|(n, t)| (n.to_string(), t.shallow_clone()))
                .collect();
            let cfg = libre::weights::checkpoint::state_dict_config(arch, &tensors)?;
            let model = libre::weights::checkpoint::from_state_dict(cfg, tensors, tch::Device::Cpu)
                .map_err(|e| anyhow::anyhow!("{}: as --model {arch}: {e}", args.input.display()))?;
            libre::weights::checkpoint::save(&args.out, model.as_ref())?;
        }
        None => {
            sd.save_safetensors(&args.out, Some(meta))?;
            out.note(format!(
                "plain tensors: to use them with eval/attack/convert pass --model ARCH there, or \
                 import with --model ARCH for a libre checkpoint ({})",
                args.out.display()
            ));
        }
    }

    let n_params = sd.num_params();
    let mut dtypes: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, t) in sd.iter() {
        *dtypes.entry(dtype_name(t)).or_default() += 1;
    }
    let show_table = args.verbose || sd.len() <= FEW;
    let mut data = json!({
        "input": args.input,
        "output": args.out,
        "format": format.map(|f| f.name()),
        "source_key": sd.source_key,
        "stripped": sd.stripped,
        "tensors": sd.len(),
        "parameters": n_params,
        "dtypes": dtypes,
        "model": args.model,
    });
    if show_table {
        data["table"] = sd
            .iter()
            .map(|(n, t)| json!({"name": n, "shape": t.size(), "dtype": dtype_name(t)}))
            .collect();
    }
    out.result(data, || {
        let dts: Vec<String> = dtypes.iter().map(|(k, v)| format!("{v} {k}")).collect();
        let mut s = format!(
            "{}: {} tensors, {} parameters ({}) -> {}\n",
            args.input.display(),
            sd.len(),
            n_params,
            dts.join(", "),
            args.out.display()
        );
        if show_table {
            s += &table(&sd);
        } else {
            s += &format!("({} tensors; --verbose lists them)\n", sd.len());
        }
        s
    });
    Ok(())
}
