//! Run directories: every output of `train`, `finetune`, `eval --out` lives in one directory with
//! `config.json` (all settings, seed, git revision, libre and libtorch versions, device), a per-epoch
//! metrics log (`metrics.csv`), the checkpoint and `summary.json`. Every file is written atomically.

use crate::{Error, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// The libtorch version libre is built against (tch 0.24 pins it).
pub const LIBTORCH_VERSION: &str = "2.11.0";

/// Provenance recorded next to every output.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Provenance {
    pub libre_version: String,
    pub libtorch_version: String,
    pub device: String,
    pub command: Vec<String>,
    pub created_unix: u64,
    /// libtorch intra-op threads and the OpenMP wait policy the run had (timings depend on both).
    #[serde(default)]
    pub threads: i64,
    #[serde(default)]
    pub omp_wait_policy: Option<String>,
    /// Whether glibc was told to keep freed activation memory ([`crate::runtime::alloc`]).
    #[serde(default)]
    pub malloc_tuning: Option<crate::runtime::alloc::AllocTuning>,
}

impl Provenance {
    pub fn new(device: tch::Device) -> Self {
        Provenance {
            libre_version: crate::VERSION.to_string(),
            libtorch_version: LIBTORCH_VERSION.to_string(),
            device: crate::runtime::device::name(device),
            command: std::env::args().collect(),
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            threads: tch::get_num_threads() as i64,
            omp_wait_policy: std::env::var("OMP_WAIT_POLICY").ok(),
            malloc_tuning: crate::runtime::alloc::current(),
        }
    }
}

/// A run directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub path: PathBuf,
}

impl RunDir {
    /// Create (or reuse, for `--resume`) a run directory.
    pub fn create(path: &Path) -> Result<Self> {
        std::fs::create_dir_all(path)
            .map_err(|e| Error::io(format!("create run directory {}", path.display()), e))?;
        Ok(RunDir {
            path: path.to_path_buf(),
        })
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Write a serialisable value as pretty JSON, atomically.
    pub fn write_json<T: Serialize>(&self, name: &str, value: &T) -> Result<()> {
        let text = serde_json::to_string_pretty(value)
            .map_err(|e| Error::invalid(format!("serialise {name}: {e}")))?;
        crate::cache::write_atomic(&self.file(name), format!("{text}\n").as_bytes())
    }

    pub fn read_json<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<T> {
        let p = self.file(name);
        let text = std::fs::read_to_string(&p)
            .map_err(|e| Error::io(format!("read {}", p.display()), e))?;
        serde_json::from_str(&text).map_err(|e| Error::bad_file(&p, e.to_string()))
    }

    /// Rewrite a CSV log atomically with the given header and rows (the log is small: one row an
    /// epoch), so a crash never leaves a torn line.
    pub fn write_csv(&self, name: &str, header: &[&str], rows: &[Vec<String>]) -> Result<()> {
        let mut s = header.join(",");
        s.push('\n');
        for r in rows {
            s.push_str(&r.join(","));
            s.push('\n');
        }
        crate::cache::write_atomic(&self.file(name), s.as_bytes())
    }

    /// Read back a CSV log written by [`RunDir::write_csv`] (rows without the header).
    pub fn read_csv_rows(&self, name: &str) -> Result<Vec<Vec<String>>> {
        let p = self.file(name);
        let text = std::fs::read_to_string(&p)
            .map_err(|e| Error::io(format!("read {}", p.display()), e))?;
        Ok(text
            .lines()
            .skip(1)
            .filter(|l| !l.is_empty())
            .map(|l| l.split(',').map(String::from).collect())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_csv_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let r = RunDir::create(&d.path().join("run")).unwrap();
        let p = Provenance::new(tch::Device::Cpu);
        r.write_json("config.json", &p).unwrap();
        let back: Provenance = r.read_json("config.json").unwrap();
        assert_eq!(back, p);
        r.write_csv(
            "m.csv",
            &["epoch", "loss"],
            &[vec!["1".into(), "0.5".into()]],
        )
        .unwrap();
        assert_eq!(
            r.read_csv_rows("m.csv").unwrap(),
            vec![vec!["1".to_string(), "0.5".into()]]
        );
    }
}
