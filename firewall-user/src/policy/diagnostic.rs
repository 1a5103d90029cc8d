//! Located messages: `file:line:col: error: ...`, on one line whatever the
//! policy's strings hold.

use std::fmt;

/// A located message. `Display` prints `file:line:col: message`; use
/// `render("error")` / `render("warning")` for the full compiler-style line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl Diagnostic {
    /// `file:line:col: {severity}: message`.
    pub fn render(&self, severity: &str) -> String {
        format!("{}:{}:{}: {severity}: {}", self.file, self.line, self.col, self.message)
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: {}", self.file, self.line, self.col, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// One line per problem, each `file:line:col: error: message`.
    #[error("{}", .0.iter().map(|d| d.render("error")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Diagnostic>),
}

/// `message` with control and bidi-override characters escaped (`\n`,
/// `\u{202e}`): messages quote the policy's own strings, and a diagnostic
/// must stay one line that a terminal shows as written.
pub(super) fn one_line(message: &str) -> String {
    let hidden = |c: char| {
        c.is_control() || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !message.contains(hidden) {
        return message.to_owned();
    }
    message.chars().map(|c| if hidden(c) { c.escape_default().to_string() } else { c.to_string() }).collect()
}

