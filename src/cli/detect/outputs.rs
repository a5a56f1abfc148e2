//! Where `libre detect` writes and what it must not overwrite: the `--out` file (a shard's part
//! file), refused over any input (named on the command line, listed, or found in a folder), and
//! the `--files-from` list, read before the model loads so a bad list costs nothing.

use super::{checks, DetectArgs};
use crate::cli::Output;
use libre::detect::input::{self, InputList, Segment};
use libre::detect::parts;
use libre::jobs::shard::Shard;
use std::path::{Path, PathBuf};

/// The shard this run is, the file it writes (None: standard output) and the input list.
pub(super) struct Io {
    pub shard: Option<Shard>,
    pub out_path: Option<PathBuf>,
    pub list: Option<InputList>,
}

/// Checks the output and input flags of `libre detect` before any work.
pub(super) fn plan(args: &DetectArgs, weights: &str, out: &Output) -> anyhow::Result<Io> {
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
        checks::check_out_file(p)?;
        // Inputs named on the command line, checked before the model loads; the files of
        // folders and lists once they are resolved.
        let mut named: Vec<(&str, &Path)> = args
            .inputs
            .iter()
            .map(|s| Path::new(s.as_str()))
            .filter(|p| p.exists())
            .map(|p| ("an input", p))
            .collect();
        named.push(("the --weights file", Path::new(weights)));
        if let Some(f) = args.files_from.as_deref().filter(|f| *f != input::STDIN) {
            named.push(("the --files-from list", Path::new(f)));
        }
        crate::cli::refuse_output_over_inputs("--out", p, &named)?;
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
            let l = InputList::read(f, args.null)?;
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
            .find(|(_, e)| crate::cli::same_file(p, Path::new(e.as_str())))
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
    Ok(Io {
        shard,
        out_path,
        list,
    })
}

/// Refuses an `--out` file that is one of the resolved input images.
pub(super) fn refuse_over_images(out_path: Option<&Path>, segs: &[Segment]) -> anyhow::Result<()> {
    if let Some(p) = out_path.filter(|p| p.exists()) {
        for seg in segs {
            if let Segment::Images(files) = seg {
                if let Some(f) = files.iter().find(|f| crate::cli::same_file(p, f)) {
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
    Ok(())
}
