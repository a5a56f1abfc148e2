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
