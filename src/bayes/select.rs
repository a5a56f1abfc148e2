//! Which layers to convert (docs/design.md section 4; the `--layers` flag): `all`, `last-block`,
//! or a comma-separated list of module paths (`layer4.2` selects every layer under it, `fc` the
//! layer itself) and globs (`layer4.*.conv*`; `*` matches any run of characters, dots included).

use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// A selection of layers by path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LayerSelection {
    All,
    /// The model's last block before the classifier head (ResNet: `layer4.<last>`).
    LastBlock,
    /// Paths, module prefixes or globs.
    Paths(Vec<String>),
}

impl std::str::FromStr for LayerSelection {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "" => Err(Error::invalid(
                "empty layer selection: expected all, last-block, or a list of paths",
            )),
            "all" => Ok(LayerSelection::All),
            "last-block" => Ok(LayerSelection::LastBlock),
            list => Ok(LayerSelection::Paths(
                list.split(',')
                    .map(|p| p.trim().to_string())
                    .filter(|p| !p.is_empty())
                    .collect(),
            )),
        }
    }
}

/// `*` glob matching over the whole string.
pub fn glob_match(pattern: &str, s: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), s.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0usize, 0usize, None, 0usize);
    while ti < t.len() {
        if pi < p.len() && p[pi] != '*' && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(sp) = star {
            pi = sp + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

impl LayerSelection {
    /// Resolves the selection against the model's layer paths (in model order).
    ///
    /// Every entry must match at least one layer; otherwise the error lists the available paths.
    pub fn resolve(&self, available: &[String], last_block: &[String]) -> Result<Vec<String>> {
        let entries: Vec<String> = match self {
            LayerSelection::All => return Ok(available.to_vec()),
            LayerSelection::LastBlock => last_block.to_vec(),
            LayerSelection::Paths(p) => p.clone(),
        };
        if entries.is_empty() {
            return Err(Error::invalid(
                "empty layer selection: name at least one path",
            ));
        }
        let mut chosen = vec![false; available.len()];
        for e in &entries {
            let mut hit = false;
            for (i, a) in available.iter().enumerate() {
                let m = if e.contains('*') {
                    glob_match(e, a)
                } else {
                    a == e || a.starts_with(&format!("{e}."))
                };
                if m {
                    chosen[i] = true;
                    hit = true;
                }
            }
            if !hit {
                return Err(Error::invalid(format!(
                    "unknown layer path '{e}'; available: {}",
                    available.join(", ")
                )));
            }
        }
        Ok(available
            .iter()
            .zip(chosen)
            .filter(|(_, c)| *c)
            .map(|(a, _)| a.clone())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn avail() -> Vec<String> {
        [
            "conv1",
            "bn1",
            "layer4.1.conv1",
            "layer4.1.bn1",
            "layer4.10.conv1",
            "fc",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    #[test]
    fn prefixes_are_module_boundaries() {
        let sel: LayerSelection = "layer4.1".parse().unwrap();
        let r = sel.resolve(&avail(), &[]).unwrap();
        assert_eq!(r, vec!["layer4.1.conv1", "layer4.1.bn1"]);
    }

    #[test]
    fn globs_and_lists() {
        let sel: LayerSelection = "layer4.*.conv1, fc".parse().unwrap();
        let r = sel.resolve(&avail(), &[]).unwrap();
        assert_eq!(r, vec!["layer4.1.conv1", "layer4.10.conv1", "fc"]);
        assert!(glob_match("*", "a.b"));
        assert!(!glob_match("a*c", "abd"));
    }

    #[test]
    fn unknown_path_lists_available() {
        let sel: LayerSelection = "layer5".parse().unwrap();
        let e = sel.resolve(&avail(), &[]).unwrap_err().to_string();
        assert!(
            e.contains("unknown layer path 'layer5'") && e.contains("layer4.1.bn1"),
            "{e}"
        );
    }
}
