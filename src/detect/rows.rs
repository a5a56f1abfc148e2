//! The rows `libre detect` writes, one per input ([`RowScorer`] scores a batch into them): csv (a header, then quoted records), jsonl
//! (one JSON object a line, the scores under their names) or an aligned table for terminals.
//! The formats are outputs other tools read: their bytes must not change.

use super::input::Batch;
use super::{Detector, Score};
use crate::{Error, Result};
use serde_json::{json, Map, Value};
use std::io::Write;
use tch::{Device, Kind};

/// The output format of the rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Jsonl,
    Table,
}

impl Format {
    /// The format's name (`csv`, `jsonl`, `table`), as a shard manifest records it.
    pub fn name(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Jsonl => "jsonl",
            Format::Table => "table",
        }
    }
}

/// One output row: an input, its label when the data has one, the prediction, the scores in
/// column order, whether it was flagged (None without a threshold) and `ok` or why it was
/// skipped.
#[derive(Debug, Clone)]
pub struct Row {
    pub source: String,
    pub class: Option<i64>,
    pub pred: Option<i64>,
    pub confidence: Option<f64>,
    pub scores: Vec<f64>,
    pub flagged: Option<bool>,
    pub status: String,
}

/// How a batch becomes rows: the scores computed (those shown, then the flagging score when it is
/// not shown), which one flags, and at what threshold.
pub struct RowScorer {
    computed: Vec<Score>,
    shown: usize,
    flag_idx: usize,
    threshold: Option<f64>,
    /// How a skipped image's error reads in its row (the library's message unless the caller
    /// says otherwise: the CLI names its own flags there, as on standard error).
    explain: Box<dyn Fn(&Error) -> String + Send + Sync>,
}

impl RowScorer {
    /// Explain skipped images with `f` instead of the error's own message.
    pub fn explain_with(mut self, f: impl Fn(&Error) -> String + Send + Sync + 'static) -> Self {
        self.explain = Box::new(f);
        self
    }

    /// Rows with the `shown` scores, flagged when `flag` reaches `threshold` (never without
    /// one).
    pub fn new(shown: &[Score], flag: Score, threshold: Option<f64>) -> RowScorer {
        let mut computed = shown.to_vec();
        if !computed.contains(&flag) {
            computed.push(flag);
        }
        let flag_idx = computed.iter().position(|s| *s == flag).expect("pushed");
        RowScorer {
            computed,
            shown: shown.len(),
            flag_idx,
            threshold,
            explain: Box::new(|e| e.to_string()),
        }
    }

    /// The rows of batch `b` in input order: a `skipped` row for each image that did not decode,
    /// the others scored by `det` on `device` in one forward, libtorch's generator seeded with
    /// `seed` first.
    pub fn rows(&self, det: &Detector, b: &Batch, seed: i64, device: Device) -> Result<Vec<Row>> {
        let mut rows: Vec<Option<Row>> = (0..b.sources.len()).map(|_| None).collect();
        for (i, img) in b.images.iter().enumerate() {
            if let Err(e) = img {
                rows[i] = Some(Row {
                    source: b.sources[i].clone(),
                    class: None,
                    pred: None,
                    confidence: None,
                    scores: vec![f64::NAN; self.shown],
                    flagged: None,
                    status: format!("skipped: {}", (self.explain)(e)),
                });
            }
        }
        if let Some((x, idx)) = b.tensor(det.input_shape()) {
            tch::manual_seed(seed);
            let (pred, sc) = det.score(&x.to_device(device), &self.computed)?;
            let cls = Vec::<i64>::try_from(pred.class.to_device(Device::Cpu))?;
            let conf =
                Vec::<f64>::try_from(pred.confidence.to_kind(Kind::Double).to_device(Device::Cpu))?;
            let vals: Vec<Vec<f64>> = sc
                .iter()
                .map(|t| Vec::<f64>::try_from(t.to_kind(Kind::Double).to_device(Device::Cpu)))
                .collect::<std::result::Result<_, _>>()?;
            for (j, &i) in idx.iter().enumerate() {
                let fl = self.threshold.map(|t| vals[self.flag_idx][j] >= t);
                rows[i] = Some(Row {
                    source: b.sources[i].clone(),
                    class: b.labels.as_ref().map(|l| l[i]),
                    pred: Some(cls[j]),
                    confidence: Some(conf[j]),
                    scores: (0..self.shown).map(|k| vals[k][j]).collect(),
                    flagged: fl,
                    status: "ok".into(),
                });
            }
        }
        Ok(rows.into_iter().flatten().collect())
    }
}

/// Writes rows in one format to a sink, the header (csv, table) first.
pub struct RowWriter {
    fmt: Format,
    w: Box<dyn Write>,
    header: Vec<String>,
    score_names: Vec<String>,
}

/// One CSV record (quoted as needed) with its line end.
fn csv_line(cells: &[String]) -> std::io::Result<Vec<u8>> {
    let mut c = csv::Writer::from_writer(Vec::new());
    c.write_record(cells)?;
    c.into_inner().map_err(|e| e.into_error())
}

impl RowWriter {
    /// A writer of rows with the scores `score_names` (in column order) to `w`; writes the
    /// header.
    pub fn new(fmt: Format, w: Box<dyn Write>, score_names: Vec<String>) -> std::io::Result<Self> {
        let mut header: Vec<String> = ["source", "class", "pred", "confidence"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        header.extend(score_names.iter().cloned());
        header.push("flagged".into());
        header.push("status".into());
        let mut rw = RowWriter {
            fmt,
            w,
            header,
            score_names,
        };
        match fmt {
            Format::Csv => {
                let line = csv_line(&rw.header)?;
                rw.w.write_all(&line)?;
            }
            Format::Table => {
                let line = rw.table_line(&rw.header.clone());
                writeln!(rw.w, "{line}")?;
            }
            Format::Jsonl => {}
        }
        Ok(rw)
    }

    fn table_line(&self, cells: &[String]) -> String {
        let n = cells.len();
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i == 0 {
                    format!("{c:<32}")
                } else if i == n - 1 {
                    c.clone()
                } else {
                    format!("{c:>12}")
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Writes one row.
    pub fn write(&mut self, r: &Row) -> std::io::Result<()> {
        let opt = |v: Option<String>| v.unwrap_or_default();
        let cells: Vec<String> = {
            let mut c = vec![
                r.source.clone(),
                opt(r.class.map(|v| v.to_string())),
                opt(r.pred.map(|v| v.to_string())),
                opt(r.confidence.map(|v| format!("{v:.6}"))),
            ];
            c.extend(r.scores.iter().map(|v| format!("{v:.6e}")));
            c.push(opt(r.flagged.map(|f| (f as u8).to_string())));
            c.push(r.status.clone());
            c
        };
        match self.fmt {
            Format::Csv => {
                let line = csv_line(&cells)?;
                self.w.write_all(&line)?;
            }
            Format::Table => {
                let line = self.table_line(&cells);
                writeln!(self.w, "{line}")?;
            }
            Format::Jsonl => {
                let mut m = Map::new();
                m.insert("source".into(), json!(r.source));
                m.insert("class".into(), json!(r.class));
                m.insert("pred".into(), json!(r.pred));
                m.insert("confidence".into(), json!(r.confidence));
                let sc: Map<String, Value> = self
                    .score_names
                    .iter()
                    .zip(&r.scores)
                    .map(|(n, v)| (n.clone(), json!(v)))
                    .collect();
                m.insert("scores".into(), Value::Object(sc));
                m.insert("flagged".into(), json!(r.flagged));
                m.insert("status".into(), json!(r.status));
                writeln!(self.w, "{}", Value::Object(m))?;
            }
        }
        Ok(())
    }

    /// Flushes the sink.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.w.flush()
    }
}
