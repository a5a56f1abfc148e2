//! The library's error type: every variant carries what failed (file, name, shape, flag).

use std::path::PathBuf;

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // The cause is the source (printed by the CLI's error chain), not repeated in the message.
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    InvalidArgument(String),
    /// A setting outside its domain, under the library's own name for it (a config field such as
    /// `fpr` or `mc_samples`, never a CLI flag): the experiment file uses the same names as keys,
    /// and the CLI shows the flag that carried the value (`--mc-samples`), so nobody is told
    /// about a flag they never typed (ripgrep's split: flag names belong to the parser).
    #[error("{name} = {value}: {constraint}")]
    Param {
        name: &'static str,
        value: String,
        constraint: String,
    },
    /// A setting that this input needs and that was not given (`arch` to read a plain
    /// state_dict), under its library name; the CLI names the flag that gives it.
    #[error("{why} (set {name})")]
    Missing { name: &'static str, why: String },
    #[error("{path}: {msg}")]
    BadFile { path: PathBuf, msg: String },
    #[error("fetching {package}: {msg}")]
    Fetch { package: String, msg: String },
    #[error("{0}")]
    Shape(String),
    #[error("device: {0}")]
    Device(String),
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    #[error("safetensors: {0}")]
    SafeTensors(#[from] safetensors::SafeTensorError),
    /// An attack's own error (its settings, the victim, shapes), unchanged.
    #[error(transparent)]
    Attack(#[from] libre_attacks::AttackError),
    /// A metrics, CSV table or report error, unchanged.
    #[error(transparent)]
    Report(#[from] libre_reports::ReportError),
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
}

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
    pub fn bad_file(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::BadFile {
            path: path.into(),
            msg: msg.into(),
        }
    }
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }
    /// [`Error::Param`]: `name` is the setting's library name (snake_case), `value` what was
    /// given, `constraint` what it must be ("must be in (0, 1)").
    pub fn param(
        name: &'static str,
        value: impl std::fmt::Display,
        constraint: impl Into<String>,
    ) -> Self {
        Error::Param {
            name,
            value: value.to_string(),
            constraint: constraint.into(),
        }
    }
}

/// An error and its causes on one line (`a: b: c`), for wrapping another crate's error in a
/// message without losing its sources.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
