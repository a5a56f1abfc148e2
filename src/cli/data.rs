//! `libre data list` and `libre data fetch NAME`: what real data and weights exist, what is cached.

use super::Output;
use libre::data::sources;
use libre::weights::zoo;
use serde_json::json;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Subcommand, Debug)]
enum Cmd {
    /// Show the data sets and zoo weights, their sizes, licences and whether they are cached.
    List,
    /// Fetch (and convert) a data set or zoo model into the cache; `all` fetches everything.
    Fetch {
        /// A data set (mnist, mnist5k, fashion-mnist), a zoo model (lenet5-mnist, ...), or `all`.
        names: Vec<String>,
    },
    /// Print the cache directory.
    Dir,
}

pub fn run(args: Args, out: Output) -> anyhow::Result<()> {
    match args.cmd {
        Cmd::Dir => {
            let d = libre::cache::root();
            out.result(json!({ "cache": d }), || format!("{}\n", d.display()));
            Ok(())
        }
        Cmd::List => {
            let mut rows = Vec::new();
            for s in sources::SOURCES {
                rows.push(json!({
                    "name": s.name, "kind": "data",
                    "splits": s.splits,
                    "package": s.package.spec(),
                    "download_mb": s.download_mb,
                    "cached": sources::is_cached(s),
                    "licence": s.licence,
                    "content": s.content,
                }));
            }
            for m in zoo::MODELS {
                rows.push(json!({
                    "name": m.name, "kind": "weights", "arch": m.arch,
                    "package": m.package.spec(),
                    "download_mb": m.download_mb,
                    "cached": zoo::checkpoint_path(m).is_file(),
                    "licence": m.licence,
                    "content": m.content,
                }));
            }
            let data = json!({ "cache": libre::cache::root(), "entries": rows });
            out.result(data, || {
                let mut s = format!(
                    "{:<18} {:<8} {:<40} {:>7}  {:<6}  {}\n",
                    "NAME", "KIND", "PACKAGE", "MB", "CACHED", "LICENCE"
                );
                for r in &rows {
                    let name = match r["splits"].as_array() {
                        Some(sp) if !sp.is_empty() => format!(
                            "{}:{}",
                            r["name"].as_str().unwrap_or_default(),
                            sp.iter()
                                .map(|v| v.as_str().unwrap_or_default())
                                .collect::<Vec<_>>()
                                .join("|")
                        ),
                        _ => r["name"].as_str().unwrap_or_default().to_string(),
                    };
                    s += &format!(
                        "{:<18} {:<8} {:<40} {:>7.1}  {:<6}  {}\n",
                        name,
                        r["kind"].as_str().unwrap_or_default(),
                        r["package"].as_str().unwrap_or_default(),
                        r["download_mb"].as_f64().unwrap_or_default(),
                        if r["cached"].as_bool().unwrap_or_default() {
                            "yes"
                        } else {
                            "no"
                        },
                        r["licence"].as_str().unwrap_or_default()
                    );
                }
                s += &format!("cache: {}\n", libre::cache::root().display());
                s
            });
            Ok(())
        }
        Cmd::Fetch { names } => {
            if names.is_empty() {
                anyhow::bail!("name what to fetch (see `libre data list`), or `all`");
            }
            let mut names = names;
            if names.iter().any(|n| n == "all") {
                names = sources::SOURCES
                    .iter()
                    .map(|s| s.name.to_string())
                    .chain(zoo::MODELS.iter().map(|m| m.name.to_string()))
                    .collect();
            }
            let mut fetched = Vec::new();
            for name in &names {
                let mut did_work = false;
                let mut note = |m: &str| {
                    did_work = true;
                    out.note(m);
                };
                let paths: Vec<std::path::PathBuf> = if let Some(s) = sources::find(name) {
                    if s.splits.is_empty() {
                        vec![sources::ensure(s.name, None, &mut note)?]
                    } else {
                        s.splits
                            .iter()
                            .map(|sp| sources::ensure(s.name, Some(sp), &mut note))
                            .collect::<Result<_, _>>()?
                    }
                } else if let Some(m) = zoo::find(name) {
                    vec![zoo::fetch(m, &mut note)?]
                } else {
                    anyhow::bail!("unknown data set or zoo model '{name}' (see `libre data list`)");
                };
                out.event(
                    "fetched",
                    json!({ "name": name, "paths": paths, "cached_before": !did_work }),
                );
                fetched.push(json!({ "name": name, "paths": paths, "cached_before": !did_work }));
            }
            out.result(json!({ "fetched": fetched }), || {
                fetched
                    .iter()
                    .map(|f| {
                        format!(
                            "{}: {} ({})\n",
                            f["name"].as_str().unwrap_or_default(),
                            f["paths"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .map(|p| p.as_str().unwrap_or(""))
                                .collect::<Vec<_>>()
                                .join(", "),
                            if f["cached_before"].as_bool().unwrap_or_default() {
                                "cached"
                            } else {
                                "fetched"
                            }
                        )
                    })
                    .collect()
            });
            Ok(())
        }
    }
}
