//! What the configuration files (`--auth-config`, `--tenant-limits`) share: reading one, parsing
//! its TOML, and saying on which line a problem is.

use std::path::Path;

/// Reads the file at `path` and hands its text to `parse`; either failure names `what` the file is
/// (`the auth file`) and its path.
pub(crate) fn read<T>(path: &Path, what: &str, parse: impl FnOnce(&str) -> Result<T, String>) -> Result<T, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading {what} {}: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("{what} {}: {e}", path.display()))
}

/// The file's TOML in the shape `T`; the parser's message says the line and column at fault.
pub(crate) fn toml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())
}

/// The line (from 1) of a file's text that byte `offset` is on, for messages about the file.
pub(crate) fn line_at(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|b| **b == b'\n').count() + 1
}
