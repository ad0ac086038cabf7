//! Errors raised while loading a policy bundle.

use std::fmt;

/// One problem in a bundle, located in its file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Diagnostic {
    /// Path of the file, relative to the bundle directory.
    pub file: String,
    /// 1-based line; 0 when the problem concerns the file as a whole.
    pub line: usize,
    /// 1-based column; 0 when the problem concerns the file as a whole.
    pub column: usize,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file,
            self.line.max(1),
            self.column.max(1),
            self.message
        )
    }
}

/// Why a bundle could not be loaded: every problem found, not just the first.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid policy bundle: {}", render(.diagnostics))]
pub struct BundleError {
    pub diagnostics: Vec<Diagnostic>,
    /// Non-fatal findings made along the way (Cedar validation warnings).
    pub warnings: Vec<Diagnostic>,
}

fn render(diags: &[Diagnostic]) -> String {
    diags
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Byte offset in `text` to a 1-based (line, column) pair, counting columns
/// in characters.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut line = 1;
    let mut col = 1;
    for (i, ch) in text.char_indices() {
        if i >= offset {
            break;
        }
        if ch == '\n' {
            line += 1;
            col = 1;
        } else {
            col += 1;
        }
    }
    (line, col)
}

/// Turns any miette diagnostic (Cedar's errors) into located diagnostics.
pub(crate) fn from_miette(
    file: &str,
    text: &str,
    err: &dyn miette::Diagnostic,
    prefix: &str,
) -> Diagnostic {
    let offset = err
        .labels()
        .and_then(|mut labels| labels.next())
        .map(|label| label.offset());
    let (line, column) = offset.map_or((0, 0), |o| line_col(text, o));
    let mut message = format!("{prefix}{err}");
    if let Some(help) = err.help() {
        message.push_str(&format!(" (help: {help})"));
    }
    Diagnostic {
        file: file.to_owned(),
        line,
        column,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_lines_and_chars() {
        let text = "ab\ncdé\nf";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 3), (2, 1));
        assert_eq!(line_col(text, 5), (2, 3));
        assert_eq!(line_col(text, 8), (3, 1));
    }
}
