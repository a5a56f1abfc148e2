//! Checks of the paths a command is given, before any work: outputs that would overwrite inputs
//! or foreign files, and `--weights` naming a directory.

/// Whether `a` and `b` name the same existing file (device and inode: symbolic and hard links,
/// `./x` and `x` included).
pub fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// `p` made absolute with its longest existing prefix resolved (symbolic links, `..`), so that
/// paths which may not exist yet can be compared.
pub fn resolved(p: &std::path::Path) -> std::path::PathBuf {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(p)
    };
    let mut rest = Vec::new();
    let mut cur = abs.as_path();
    loop {
        if let Ok(mut c) = cur.canonicalize() {
            c.extend(rest.iter().rev());
            return c;
        }
        match (cur.parent(), cur.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                cur = parent;
            }
            _ => return abs,
        }
    }
}

/// Refuses the output `out` (given as `flag`) when it is one of `inputs` (`(what, path)`), or a
/// directory that holds one: writing it would destroy what the command reads.
pub fn refuse_output_over_inputs(
    flag: &str,
    out: &std::path::Path,
    inputs: &[(&str, &std::path::Path)],
) -> anyhow::Result<()> {
    let out_r = resolved(out);
    for (what, inp) in inputs {
        if same_file(out, inp) || resolved(inp) == out_r {
            anyhow::bail!(
                "{flag} {}: that is {what}, which would be overwritten; choose another output path",
                out.display()
            );
        }
        if resolved(inp).starts_with(&out_r) {
            anyhow::bail!(
                "{flag} {}: it holds {what} ({}), which would be overwritten; choose another \
                 output path",
                out.display(),
                inp.display()
            );
        }
    }
    Ok(())
}

/// Checks a directory output before any work: a file there is refused, and so is a directory
/// holding anything but an earlier output of the same command unless `force`. `foreign` lists
/// the entries of an existing directory that the command did not write.
pub fn check_out_dir(
    flag: &str,
    dir: &std::path::Path,
    foreign: &dyn Fn(&std::path::Path) -> Vec<String>,
    force: bool,
) -> anyhow::Result<()> {
    let Ok(meta) = std::fs::metadata(dir) else {
        return Ok(()); // created later
    };
    if !meta.is_dir() {
        anyhow::bail!(
            "{flag} {}: exists and is not a directory; name a new or empty directory",
            dir.display()
        );
    }
    if force {
        return Ok(());
    }
    let mut names = foreign(dir);
    if names.is_empty() {
        return Ok(());
    }
    names.sort();
    let n = names.len();
    names.truncate(5);
    anyhow::bail!(
        "{flag} {}: the directory holds files that are not an earlier output of this command \
         ({}{}); choose a new or empty directory, or pass --force to write into it anyway",
        dir.display(),
        names.join(", "),
        if n > 5 {
            format!(" and {} more", n - 5)
        } else {
            String::new()
        }
    );
}

/// The names of the entries of `dir` (none when it cannot be read: the command's own error
/// comes later and names it).
pub fn dir_entries(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Refuses `--weights` naming a directory (the loaders would say "no such file").
pub fn check_weights_arg(weights: &str) -> anyhow::Result<()> {
    if std::path::Path::new(weights).is_dir() {
        anyhow::bail!(
            "--weights {weights}: is a directory; name a checkpoint or detector file \
             (.safetensors, e.g. RUN_DIR/model.safetensors) or zoo:NAME"
        );
    }
    Ok(())
}
