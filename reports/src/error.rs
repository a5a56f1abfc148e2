//! The crate's typed error: every variant names what was wrong and where (file, line, column, index).
use std::path::PathBuf;

/// Everything that can go wrong while computing metrics, reading tables or writing a report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// No samples at all (an empty slice, or a CSV with a header and no rows).
    #[error("no data: {what}")]
    Empty { what: String },
    /// Two inputs that must pair up element by element have different lengths.
    #[error("length mismatch: {left_name} has {left} entries but {right_name} has {right}")]
    LengthMismatch {
        left_name: &'static str,
        left: usize,
        right_name: &'static str,
        right: usize,
    },
    /// A score (or probability) that is NaN or infinite; `index` is 0-based into the input slice.
    #[error("{what} at index {index} is {value}, expected a finite number")]
    NonFinite {
        what: &'static str,
        index: usize,
        value: f64,
    },
    /// A detection metric needs both classes.
    #[error(
        "only one class present ({n_pos} adversarial, {n_neg} clean): detection metrics need both \
         label 1 (adversarial) and label 0 (clean) samples"
    )]
    OneClass { n_pos: usize, n_neg: usize },
    /// An argument outside its valid range (a bin count of 0, an FPR outside [0, 1], ...).
    #[error("invalid argument {name} = {value}: {constraint}")]
    InvalidArgument {
        name: &'static str,
        value: String,
        constraint: &'static str,
    },
    /// A class label outside `0..n_classes` or a probability row that is not a distribution.
    #[error("row {row}: {problem}")]
    BadRow { row: usize, problem: String },
    /// A required CSV column is absent.
    #[error("{}: no column `{column}` (columns are: {available}){hint}", path.display())]
    MissingColumn {
        path: PathBuf,
        column: String,
        available: String,
        hint: String,
    },
    /// A CSV cell that does not parse or violates the schema; `line` is 1-based, the header is line 1.
    #[error("{}: line {line}, column `{column}`: {problem}", path.display())]
    BadCell {
        path: PathBuf,
        line: u64,
        column: String,
        problem: String,
    },
    /// A CSV file that is structurally broken (ragged rows, bad UTF-8, ...).
    #[error("{}", path.display())]
    Csv {
        path: PathBuf,
        #[source]
        source: csv::Error,
    },
    /// A file-system operation failed.
    #[error("{}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A plotting backend failed while drawing `figure`.
    #[error("drawing figure `{figure}`: {message}")]
    Plot { figure: String, message: String },
    /// JSON serialisation failed (the manifest).
    #[error("writing JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Shorthand used throughout the crate.
pub type Result<T, E = ReportError> = std::result::Result<T, E>;

impl ReportError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ReportError::Io {
            path: path.into(),
            source,
        }
    }
}
