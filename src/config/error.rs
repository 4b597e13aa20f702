//! Why a configuration was refused: which file, which key, and why.

/// Why a configuration was refused: which file, which key, and why.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {}{why}", key.as_deref().map(|k| format!("`{k}`: ")).unwrap_or_default())]
pub struct ConfigError {
    pub file: String,
    pub key: Option<String>,
    pub why: String,
}

/// ` (line N)` for the position `span` of a TOML error in `text`, or nothing.
pub(super) fn line_of(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    span.map(|s| {
        let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
        format!(" (line {line})")
    })
    .unwrap_or_default()
}
