//! The CSV tables of a run directory: their schema, readers and writers.
//!
//! Every table has a header row; the columns may come in any order and extra columns are
//! ignored, but no column name may appear twice. Errors name the file, the 1-based line (the
//! header is line 1) and the column.
//!
//! ## `scores.csv`: one row per scored input (written by the detection pipeline)
//! | column | type | meaning |
//! |---|---|---|
//! | `model` | string | `dnn` or `bnn` (any name works; figures pair models by name) |
//! | `attack` | string | attack name (`fgsm`, `pgd`, ...); on clean rows the attack they pair with, or empty / `clean` for clean rows shared by every attack of that model |
//! | `eps` | float | attack radius in pixel units of [0, 1] (ignored on shared clean rows) |
//! | `label` | 0/1 | 1 = adversarial (positive), 0 = clean (also `true`/`false`) |
//! | `score` | float | detection score, higher = more suspicious; must be finite |
//! | `clean_correct` | 0/1, optional | the clean version of this input is classified correctly |
//! | `adv_success` | 0/1, optional | (adversarial rows) the attack changed a correct prediction |
//!
//! With [`Subset::Successful`] only rows with `clean_correct = 1` are kept, and of the
//! adversarial rows only those with `adv_success = 1`: successful attacks on correctly classified
//! clean inputs against correctly classified clean inputs. [`Subset::All`] keeps every row.
//!
//! ## `classification.csv`: one row per model ([`ClassificationRow`])
//! `model,n,top1,top5,nll,brier,ece`
//!
//! ## `reliability.csv`: the reliability-diagram bins ([`ReliabilityRow`])
//! `model,bin,lo,hi,count,confidence,accuracy`
//!
//! ## `mc_curve.csv`: accuracy and NLL versus the number of MC samples ([`McCurveRow`])
//! `model,n_samples,top1,nll`
//!
//! ## `detection.csv`: detection metrics per group (written by the report, [`DetectionRow`])
//! `subset,model,attack,eps,n_pos,n_neg,auroc,aupr_in,aupr_out,tpr_at_fpr_0.01,tpr_at_fpr_0.05,`
//! `tpr_at_fpr_0.10,tnr_at_tpr95,detection_accuracy,detection_accuracy_at_fpr05,auroc_lo,auroc_hi`
//! (the last two empty
//! without a bootstrap).
use crate::classification::ClassificationMetrics;
use crate::error::{ReportError, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Which samples enter the detection metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Subset {
    /// Every row.
    #[default]
    All,
    /// Successful attacks on correctly classified clean inputs, and correctly classified clean
    /// inputs (needs the `clean_correct` and `adv_success` columns).
    Successful,
}

impl fmt::Display for Subset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Subset::All => "all",
            Subset::Successful => "successful",
        })
    }
}

impl FromStr for Subset {
    type Err = ReportError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "all" => Ok(Subset::All),
            "successful" => Ok(Subset::Successful),
            _ => Err(ReportError::InvalidArgument {
                name: "subset",
                value: s.into(),
                constraint: "expected `all` or `successful`",
            }),
        }
    }
}

impl Subset {
    /// A sentence for table captions.
    pub fn describe(&self) -> &'static str {
        match self {
            Subset::All => "all samples",
            Subset::Successful => {
                "successful attacks on correctly classified clean inputs (and those clean inputs)"
            }
        }
    }
}

/// How to read a scores CSV.
#[derive(Debug, Clone)]
pub struct ScoreCsvSpec {
    pub label_col: String,
    pub score_col: String,
    /// Columns whose values split the rows into groups (empty: one group).
    pub group_by: Vec<String>,
    pub subset: Subset,
    /// Appended to a missing-column error for the label / score column, e.g. "use --label-col".
    pub label_hint: String,
    pub score_hint: String,
    /// Appended to a missing-column error for a `group_by` column (e.g. "check --group-by").
    pub group_hint: String,
}

impl Default for ScoreCsvSpec {
    fn default() -> Self {
        ScoreCsvSpec {
            label_col: "label".into(),
            score_col: "score".into(),
            group_by: Vec::new(),
            subset: Subset::All,
            label_hint: String::new(),
            score_hint: String::new(),
            group_hint: String::new(),
        }
    }
}

/// The rows of one group, in file order.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreGroup {
    /// The values of the `group_by` columns (empty without grouping).
    pub key: Vec<String>,
    pub scores: Vec<f64>,
    pub labels: Vec<bool>,
    /// File line of each row (for error messages).
    pub lines: Vec<u64>,
}

/// A scores CSV split into groups (in order of first appearance).
#[derive(Debug, Clone)]
pub struct ScoreTable {
    pub path: PathBuf,
    pub groups: Vec<ScoreGroup>,
    /// Data rows read, and rows dropped by the subset.
    pub n_rows: usize,
    pub n_dropped: usize,
}

pub(crate) fn open_file(path: &Path) -> Result<std::fs::File> {
    std::fs::File::open(path).map_err(|e| ReportError::io(path, e))
}

pub(crate) fn csv_reader<R: std::io::Read>(input: R) -> csv::Reader<R> {
    csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(input)
}

/// Rejects a header that names a column twice: columns are looked up by name, so one of the
/// two would be read and the other silently ignored.
fn check_unique_columns(path: &Path, headers: &csv::StringRecord) -> Result<()> {
    for (j, name) in headers.iter().enumerate() {
        if let Some(i) = headers.iter().take(j).position(|h| h == name) {
            return Err(ReportError::BadCell {
                path: path.into(),
                line: 1,
                column: name.into(),
                problem: format!(
                    "the header has this column twice, as column {} and column {}",
                    i + 1,
                    j + 1
                ),
            });
        }
    }
    Ok(())
}

pub(crate) fn column_index(
    path: &Path,
    headers: &csv::StringRecord,
    name: &str,
    hint: &str,
) -> Result<usize> {
    headers.iter().position(|h| h == name).ok_or_else(|| {
        let available = headers.iter().map(|h| format!("`{h}`")).collect::<Vec<_>>();
        ReportError::MissingColumn {
            path: path.into(),
            column: name.into(),
            available: available.join(", "),
            hint: if hint.is_empty() {
                String::new()
            } else {
                format!("; {hint}")
            },
        }
    })
}

/// Parses a 0/1 cell (also `true`/`false`, `0.0`/`1.0`).
fn parse_flag(path: &Path, line: u64, column: &str, cell: &str, meaning: &str) -> Result<bool> {
    match cell {
        "1" | "1.0" | "true" | "True" | "TRUE" => Ok(true),
        "0" | "0.0" | "false" | "False" | "FALSE" => Ok(false),
        _ => Err(ReportError::BadCell {
            path: path.into(),
            line,
            column: column.into(),
            problem: format!("`{cell}` is not a valid label: expected {meaning}"),
        }),
    }
}

fn parse_finite(path: &Path, line: u64, column: &str, cell: &str) -> Result<f64> {
    let v: f64 = cell.parse().map_err(|_| ReportError::BadCell {
        path: path.into(),
        line,
        column: column.into(),
        problem: format!("`{cell}` is not a number"),
    })?;
    if !v.is_finite() {
        return Err(ReportError::BadCell {
            path: path.into(),
            line,
            column: column.into(),
            problem: format!("value is {v}; scores must be finite (no NaN or infinity)"),
        });
    }
    Ok(v)
}

/// Reads a scores CSV: validates every row (label 0/1, finite score), applies the subset and
/// splits into groups. A file with no header or no data rows is an error.
pub fn read_scores(path: &Path, spec: &ScoreCsvSpec) -> Result<ScoreTable> {
    read_scores_from(path, open_file(path)?, spec)
}

/// [`read_scores`] on any reader (`&[u8]` for bytes in memory); `path` only names the file in
/// errors. The fuzz targets (docs/fuzzing.md) call this, the code `libre metrics` runs.
pub fn read_scores_from<R: std::io::Read>(
    path: &Path,
    input: R,
    spec: &ScoreCsvSpec,
) -> Result<ScoreTable> {
    let mut rdr = csv_reader(input);
    let headers = rdr
        .headers()
        .map_err(|source| ReportError::Csv {
            path: path.into(),
            source,
        })?
        .clone();
    if headers.is_empty() || headers.iter().all(|h| h.is_empty()) {
        return Err(ReportError::Empty {
            what: format!("{} is empty (no header row)", path.display()),
        });
    }
    check_unique_columns(path, &headers)?;
    let label_i = column_index(path, &headers, &spec.label_col, &spec.label_hint)?;
    let score_i = column_index(path, &headers, &spec.score_col, &spec.score_hint)?;
    let group_i = spec
        .group_by
        .iter()
        .map(|g| column_index(path, &headers, g, &spec.group_hint))
        .collect::<Result<Vec<_>>>()?;
    let subset_i = match spec.subset {
        Subset::All => None,
        Subset::Successful => {
            let hint = "--subset successful needs it; use --subset all otherwise";
            Some((
                column_index(path, &headers, "clean_correct", hint)?,
                column_index(path, &headers, "adv_success", hint)?,
            ))
        }
    };
    let mut groups: Vec<ScoreGroup> = Vec::new();
    let mut index: HashMap<Vec<String>, usize> = HashMap::new();
    let (mut n_rows, mut n_dropped) = (0usize, 0usize);
    let mut record = csv::StringRecord::new();
    loop {
        let more = rdr
            .read_record(&mut record)
            .map_err(|source| ReportError::Csv {
                path: path.into(),
                source,
            })?;
        if !more {
            break;
        }
        let line = record.position().map_or(0, |p| p.line());
        n_rows += 1;
        let label = parse_flag(
            path,
            line,
            &spec.label_col,
            &record[label_i],
            "1 (adversarial) or 0 (clean)",
        )?;
        let score = parse_finite(path, line, &spec.score_col, &record[score_i])?;
        if let Some((cc, sa)) = subset_i {
            let ok = parse_flag(path, line, "clean_correct", &record[cc], "0 or 1")?;
            // adv_success is only meaningful on adversarial rows; clean rows may leave it empty.
            let success = if label {
                parse_flag(path, line, "adv_success", &record[sa], "0 or 1")?
            } else {
                true
            };
            if !(ok && success) {
                n_dropped += 1;
                continue;
            }
        }
        let key: Vec<String> = group_i.iter().map(|&i| record[i].to_string()).collect();
        let gi = match index.get(&key) {
            Some(&gi) => gi,
            None => {
                groups.push(ScoreGroup {
                    key: key.clone(),
                    scores: Vec::new(),
                    labels: Vec::new(),
                    lines: Vec::new(),
                });
                index.insert(key, groups.len() - 1);
                groups.len() - 1
            }
        };
        let g = &mut groups[gi];
        g.scores.push(score);
        g.labels.push(label);
        g.lines.push(line);
    }
    if n_rows == 0 {
        return Err(ReportError::Empty {
            what: format!("{} has a header but no data rows", path.display()),
        });
    }
    Ok(ScoreTable {
        path: path.into(),
        groups,
        n_rows,
        n_dropped,
    })
}

/// One row of `scores.csv`, for producers (the detection pipeline).
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreRow {
    pub model: String,
    pub attack: String,
    pub eps: f64,
    pub label: bool,
    pub score: f64,
    pub clean_correct: Option<bool>,
    pub adv_success: Option<bool>,
}

/// Writes `scores.csv` in the schema above (0/1 flags, empty cells for unknown optional flags).
pub fn write_scores(path: &Path, rows: &[ScoreRow]) -> Result<()> {
    let mut w = csv::Writer::from_path(path).map_err(|source| ReportError::Csv {
        path: path.into(),
        source,
    })?;
    let flag = |f: Option<bool>| f.map_or(String::new(), |b| (b as u8).to_string());
    let res = (|| -> csv::Result<()> {
        w.write_record([
            "model",
            "attack",
            "eps",
            "label",
            "score",
            "clean_correct",
            "adv_success",
        ])?;
        for r in rows {
            w.write_record([
                r.model.clone(),
                r.attack.clone(),
                r.eps.to_string(),
                (r.label as u8).to_string(),
                // `{:?}` prints the shortest string that round-trips the f64 exactly.
                format!("{:?}", r.score),
                flag(r.clean_correct),
                flag(r.adv_success),
            ])?;
        }
        w.flush()?;
        Ok(())
    })();
    res.map_err(|source| ReportError::Csv {
        path: path.into(),
        source,
    })
}

/// A row of `classification.csv`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassificationRow {
    pub model: String,
    pub n: usize,
    pub top1: f64,
    pub top5: f64,
    pub nll: f64,
    pub brier: f64,
    pub ece: f64,
}

/// A row of `reliability.csv`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReliabilityRow {
    pub model: String,
    pub bin: usize,
    pub lo: f64,
    pub hi: f64,
    pub count: usize,
    pub confidence: f64,
    pub accuracy: f64,
}

/// A row of `mc_curve.csv`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct McCurveRow {
    pub model: String,
    pub n_samples: usize,
    pub top1: f64,
    pub nll: f64,
}

/// A row of `detection.csv`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectionRow {
    pub subset: Subset,
    pub model: String,
    pub attack: String,
    pub eps: String,
    pub n_pos: usize,
    pub n_neg: usize,
    pub auroc: f64,
    pub aupr_in: f64,
    pub aupr_out: f64,
    #[serde(rename = "tpr_at_fpr_0.01")]
    pub tpr_at_fpr_0_01: f64,
    #[serde(rename = "tpr_at_fpr_0.05")]
    pub tpr_at_fpr_0_05: f64,
    #[serde(rename = "tpr_at_fpr_0.10")]
    pub tpr_at_fpr_0_10: f64,
    pub tnr_at_tpr95: f64,
    pub detection_accuracy: f64,
    pub detection_accuracy_at_fpr05: f64,
    pub auroc_lo: Option<f64>,
    pub auroc_hi: Option<f64>,
}

/// `classification.csv` and `reliability.csv` rows of one model's metrics.
pub fn classification_rows(
    model: &str,
    m: &ClassificationMetrics,
) -> (ClassificationRow, Vec<ReliabilityRow>) {
    let row = ClassificationRow {
        model: model.into(),
        n: m.n,
        top1: m.top1,
        top5: m.top5,
        nll: m.nll,
        brier: m.brier,
        ece: m.ece,
    };
    let bins = m
        .reliability
        .iter()
        .enumerate()
        .map(|(i, b)| ReliabilityRow {
            model: model.into(),
            bin: i,
            lo: b.lo,
            hi: b.hi,
            count: b.count,
            confidence: b.confidence,
            accuracy: b.accuracy,
        })
        .collect();
    (row, bins)
}

/// Writes serialisable rows as a CSV with a header.
pub fn write_rows<T: Serialize>(path: &Path, rows: &[T]) -> Result<()> {
    let wrap = |source| ReportError::Csv {
        path: path.into(),
        source,
    };
    let mut w = csv::Writer::from_path(path).map_err(wrap)?;
    for r in rows {
        w.serialize(r).map_err(wrap)?;
    }
    w.flush().map_err(|e| ReportError::io(path, e))
}

/// Reads a fixed-schema table (`classification.csv`, `reliability.csv`, `mc_curve.csv`,
/// `detection.csv`); an error names the file and line.
pub fn read_rows<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Vec<T>> {
    read_rows_from(path, open_file(path)?)
}

/// [`read_rows`] on any reader; `path` only names the file in errors.
pub fn read_rows_from<T: for<'de> Deserialize<'de>, R: std::io::Read>(
    path: &Path,
    input: R,
) -> Result<Vec<T>> {
    let mut rdr = csv_reader(input);
    let headers = rdr.headers().map_err(|source| ReportError::Csv {
        path: path.into(),
        source,
    })?;
    check_unique_columns(path, headers)?;
    let mut out = Vec::new();
    for rec in rdr.deserialize() {
        out.push(rec.map_err(|source| ReportError::Csv {
            path: path.into(),
            source,
        })?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn csv_file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn groups_and_subset() {
        let f = csv_file(
            "model,attack,label,score,clean_correct,adv_success\n\
             dnn,fgsm,0,0.1,1,\n\
             dnn,fgsm,1,0.9,1,1\n\
             bnn,fgsm,1,0.8,1,0\n\
             bnn,fgsm,0,0.2,0,\n\
             dnn,fgsm,1,0.7,1,1\n",
        );
        let spec = ScoreCsvSpec {
            group_by: vec!["model".into()],
            ..Default::default()
        };
        let t = read_scores(f.path(), &spec).unwrap();
        assert_eq!(t.groups.len(), 2);
        assert_eq!(t.groups[0].key, vec!["dnn"]);
        assert_eq!(t.groups[0].scores, vec![0.1, 0.9, 0.7]);
        assert_eq!(t.groups[0].lines, vec![2, 3, 6]);
        let spec = ScoreCsvSpec {
            subset: Subset::Successful,
            ..spec
        };
        let t = read_scores(f.path(), &spec).unwrap();
        assert_eq!(t.n_dropped, 2);
        assert_eq!(t.groups.len(), 1);
    }

    #[test]
    fn errors_name_line_and_column() {
        let f = csv_file("label,score\n0,0.5\n1,NaN\n");
        let e = read_scores(f.path(), &ScoreCsvSpec::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 3") && e.contains("`score`") && e.contains("finite"),
            "{e}"
        );
        let f = csv_file("label,score\n0,0.5\n2,0.1\n");
        let e = read_scores(f.path(), &ScoreCsvSpec::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 3") && e.contains("`2`"), "{e}");
        let f = csv_file("label,s\n0,0.5\n");
        let e = read_scores(f.path(), &ScoreCsvSpec::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("no column `score`") && e.contains("`s`"), "{e}");
        let f = csv_file("label,score\n");
        let e = read_scores(f.path(), &ScoreCsvSpec::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("no data rows"), "{e}");
        let f = csv_file("");
        assert!(read_scores(f.path(), &ScoreCsvSpec::default()).is_err());
        let spec = ScoreCsvSpec {
            subset: Subset::Successful,
            ..Default::default()
        };
        let f = csv_file("label,score\n0,0.5\n");
        let e = read_scores(f.path(), &spec).unwrap_err().to_string();
        assert!(e.contains("clean_correct"), "{e}");
    }

    #[test]
    fn duplicated_column_is_named_with_both_positions() {
        let f = csv_file("model,score,label,score\ndnn,0.1,0,0.9\ndnn,0.2,1,0.8\n");
        let e = read_scores(f.path(), &ScoreCsvSpec::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 1") && e.contains("`score`") && e.contains("column 2 and column 4"),
            "{e}"
        );
        // Also a column the reader does not use: the file is ambiguous either way.
        let f = csv_file("label,score,note,note\n0,0.5,a,b\n1,0.7,c,d\n");
        let e = read_scores(f.path(), &ScoreCsvSpec::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`note`") && e.contains("column 3 and column 4"),
            "{e}"
        );
        let f = csv_file("model,n_samples,top1,nll,model\nbnn,4,0.9,0.3,dnn\n");
        let e = read_rows::<McCurveRow>(f.path()).unwrap_err().to_string();
        assert!(
            e.contains("`model`") && e.contains("column 1 and column 5"),
            "{e}"
        );
    }

    #[test]
    fn score_rows_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("scores.csv");
        let rows = vec![
            ScoreRow {
                model: "bnn".into(),
                attack: "pgd".into(),
                eps: 0.03,
                label: true,
                score: 0.1 + 0.2,
                clean_correct: Some(true),
                adv_success: None,
            },
            ScoreRow {
                model: "bnn".into(),
                attack: "pgd".into(),
                eps: 0.03,
                label: false,
                score: 1e-300,
                clean_correct: None,
                adv_success: None,
            },
        ];
        write_scores(&p, &rows).unwrap();
        let spec = ScoreCsvSpec {
            group_by: vec!["model".into(), "attack".into()],
            ..Default::default()
        };
        let t = read_scores(&p, &spec).unwrap();
        assert_eq!(t.groups[0].scores, vec![0.1 + 0.2, 1e-300]);
        assert_eq!(t.groups[0].labels, vec![true, false]);
        let mc = vec![McCurveRow {
            model: "bnn".into(),
            n_samples: 4,
            top1: 0.9,
            nll: 0.3,
        }];
        let p = dir.path().join("mc.csv");
        write_rows(&p, &mc).unwrap();
        assert_eq!(read_rows::<McCurveRow>(&p).unwrap(), mc);
    }
}
