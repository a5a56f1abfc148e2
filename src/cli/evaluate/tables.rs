//! The text tables `libre evaluate`, `libre report merge` and `libre quickstart` print from a
//! finished run's summary: AUROC per detector x attack and eps, then the worst case per image.

use libre::evaluate;

/// The worst-case robust-detection table of a finished run (empty when it has no attacks).
fn worst_case_text(summary: &serde_json::Value) -> String {
    let rows = evaluate::worst_case_table(summary);
    if rows.is_empty() {
        return String::new();
    }
    let w = rows.iter().map(|r| r.0.len()).max().unwrap_or(8).max(8);
    let mut s = format!(
        "Worst case per image over the attacks at each eps (evaded = misclassified and not \
         flagged at the threshold fixed once on clean data):\n{:w$}  {:>6}  {:>8}  {:>17}\n",
        "detector", "eps", "evaded", "robust detection"
    );
    for (d, e, ev, acc, adaptive) in rows {
        let note = if adaptive {
            ""
        } else {
            "  (no adaptive attack on this score)"
        };
        s += &format!("{d:w$}  {e:>6}  {ev:>7.1}%  {acc:>16.1}%{note}\n");
    }
    s
}

/// The AUROC table of a finished run, then the worst-case table.
pub fn auroc_text(summary: &serde_json::Value) -> String {
    auroc_only_text(summary) + &worst_case_text(summary)
}

/// The AUROC table of a finished run: detectors by attack and eps.
fn auroc_only_text(summary: &serde_json::Value) -> String {
    let rows = evaluate::auroc_table(summary);
    let mut cols: Vec<String> = vec![];
    let mut dets: Vec<String> = vec![];
    for (d, a, e, _) in &rows {
        let c = format!("{a} {e}");
        if !cols.contains(&c) {
            cols.push(c);
        }
        if !dets.contains(d) {
            dets.push(d.clone());
        }
    }
    let w = dets.iter().map(|d| d.len()).max().unwrap_or(8).max(8);
    let mut s = format!("{:w$}", "AUROC");
    for c in &cols {
        s += &format!("  {c:>14}");
    }
    s.push('\n');
    for d in &dets {
        s += &format!("{d:w$}");
        for c in &cols {
            let v = rows
                .iter()
                .find(|(dd, a, e, _)| dd == d && &format!("{a} {e}") == c)
                .map(|r| format!("{:.3}", r.3))
                .unwrap_or_else(|| "-".into());
            s += &format!("  {v:>14}");
        }
        s.push('\n');
    }
    s
}
