//! Plain-text tables for terminals: what `libre metrics` prints.

/// A plain text table: columns separated by two spaces, each as wide as its widest cell, the
/// first left-aligned and the others right-aligned, trailing spaces trimmed; one line per row
/// after the header line.
pub fn render_table(header: &[String], rows: &[Vec<String>]) -> String {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(&width)
            .enumerate()
            .map(|(i, (c, &w))| {
                if i == 0 {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = line(header) + "\n";
    for r in rows {
        out += &(line(r) + "\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first column is left-aligned, the others right-aligned, and no line ends in spaces.
    #[test]
    fn columns_align_and_lines_are_trimmed() {
        let s = |v: &[&str]| v.iter().map(|c| c.to_string()).collect::<Vec<_>>();
        let t = render_table(
            &s(&["scores", "AUROC"]),
            &[s(&["a", "0.5"]), s(&["long-name", "1"])],
        );
        assert_eq!(t, "scores     AUROC\na            0.5\nlong-name      1\n");
    }
}
