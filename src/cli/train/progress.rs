//! What `libre train` and `libre finetune` show while training: a progress bar on stderr, a note
//! per epoch, and with `--json` an `epoch` event per epoch.

use crate::cli::Output;
use libre::train::{EpochLog, TrainObserver};

/// The training progress bar, with a note and a JSON event per epoch.
pub(super) struct Bars<'a> {
    pub out: &'a Output,
    pub pb: indicatif::ProgressBar,
    pub epochs: usize,
}

impl TrainObserver for Bars<'_> {
    fn batch(&mut self, epoch: usize, done: usize, total: usize, loss: f64, acc: f64) {
        if self.pb.length() != Some(total as u64) {
            self.pb.set_length(total as u64);
        }
        self.pb.set_prefix(format!("epoch {epoch}/{}", self.epochs));
        self.pb.set_position(done as u64);
        self.pb
            .set_message(format!("loss {loss:.4} acc {:.2}%", 100.0 * acc));
    }
    fn epoch(&mut self, l: &EpochLog) {
        self.pb.set_position(0);
        let ev = match (l.eval_top1, l.eval_nll, l.eval_ece) {
            (Some(a), Some(n), Some(e)) => {
                format!("  eval top-1 {:.2}% NLL {n:.4} ECE {e:.4}", 100.0 * a)
            }
            _ => String::new(),
        };
        self.pb.suspend(|| {
            self.out.note(format!(
                "epoch {}: loss {:.4} train acc {:.2}%{ev}  ({:.1} s, {:.0} img/s)",
                l.epoch,
                l.loss,
                100.0 * l.train_acc,
                l.seconds,
                l.images_per_s
            ))
        });
        self.out
            .event("epoch", serde_json::to_value(l).unwrap_or_default());
    }
}
