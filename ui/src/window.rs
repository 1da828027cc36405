//! The time range a page shows, kept in its URL: `range=15m|1h|6h|24h` (ending now), or
//! `range=custom` with `start` and `end` (RFC 3339, unix nanoseconds, or the `YYYY-MM-DDTHH:MM` of a
//! browser's date-time input, read as UTC).

use std::collections::HashMap;

use hopscope_schemas::time::{TimeRange, format_time, parse_time};

use crate::UiError;

/// The ranges the picker offers, ending now.
pub(crate) const PRESETS: [(&str, i64); 4] = [("15m", 15 * 60), ("1h", 3_600), ("6h", 6 * 3_600), ("24h", 24 * 3_600)];

/// The preset a page shows when its URL names none.
pub(crate) const DEFAULT_PRESET: &str = "1h";

/// The parameters a time range takes; every page accepts them.
pub(crate) const PARAMS: [&str; 3] = ["range", "start", "end"];

/// The parameter that names a page's tenant in multi-tenant mode. The server's tenant dispatch reads
/// it (and takes it out of the URL) before a page sees its parameters.
pub const TENANT_PARAM: &str = "tenant";

/// A page's time range and how its URL names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Window {
    pub range: TimeRange,
    /// The preset (`1h`, ...), or `None` for a custom range.
    pub preset: Option<&'static str>,
    /// The tenant the page shows, when the server keeps tenants apart: links keep it (`tenant=`),
    /// since a browser following a link cannot send `X-Scope-OrgID`.
    pub tenant: Option<String>,
    /// Said at the top of the page when answers may miss acknowledged spans (a writer of the
    /// shared storage stopped holding some): not part of the range, never in links.
    pub notice: Option<String>,
}

impl Window {
    /// Reads `range`, `start` and `end` from a page's parameters; `now_ns` ends a preset range.
    pub(crate) fn from_params(params: &HashMap<String, String>, now_ns: i64) -> Result<Self, UiError> {
        let text = |name: &str| params.get(name).map(String::as_str).filter(|v| !v.is_empty());
        let custom = text("start").is_some() || text("end").is_some();
        match text("range") {
            Some("custom") => Self::custom(text("start"), text("end")),
            None if custom => Self::custom(text("start"), text("end")),
            None => Ok(Self::preset(DEFAULT_PRESET, now_ns)),
            Some(name) => {
                if custom {
                    return Err(UiError::BadParameter(format!(
                        "range: {name:?} ends now; give range=custom to use start and end"
                    )));
                }
                let (preset, _) = PRESETS.iter().find(|(p, _)| *p == name).ok_or_else(|| {
                    UiError::BadParameter(format!("range: expected 15m, 1h, 6h, 24h or custom, got {name:?}"))
                })?;
                Ok(Self::preset(preset, now_ns))
            }
        }
    }

    fn preset(name: &'static str, now_ns: i64) -> Self {
        let seconds = PRESETS.iter().find(|(p, _)| *p == name).map_or(3_600, |(_, s)| *s);
        Window {
            range: TimeRange { start_ns: now_ns.saturating_sub(seconds * 1_000_000_000), end_ns: now_ns },
            preset: Some(name),
            tenant: None,
            notice: None,
        }
    }

    fn custom(start: Option<&str>, end: Option<&str>) -> Result<Self, UiError> {
        let (Some(start), Some(end)) = (start, end) else {
            return Err(UiError::BadParameter("start: a custom range needs both start and end".into()));
        };
        let (start_ns, end_ns) = (time("start", start)?, time("end", end)?);
        if start_ns >= end_ns {
            return Err(UiError::BadParameter(format!(
                "start: must be before end (start {}, end {})",
                format_time(start_ns),
                format_time(end_ns)
            )));
        }
        Ok(Window { range: TimeRange { start_ns, end_ns }, preset: None, tenant: None, notice: None })
    }

    /// The URL parameters that name this range (and the tenant), for links that keep them.
    pub(crate) fn query_pairs(&self) -> Vec<(&'static str, String)> {
        let mut pairs = match self.preset {
            Some(preset) => vec![("range", preset.to_owned())],
            None => vec![
                ("range", "custom".to_owned()),
                ("start", format_time(self.range.start_ns)),
                ("end", format_time(self.range.end_ns)),
            ],
        };
        if let Some(tenant) = &self.tenant {
            pairs.push((TENANT_PARAM, tenant.clone()));
        }
        pairs
    }

    /// A short description: `the last 1h` or `2026-12-01 10:00 – 11:00 UTC`.
    pub(crate) fn describe(&self) -> String {
        match self.preset {
            Some(preset) => format!("the last {preset}"),
            None => format!("{} – {} UTC", minute(self.range.start_ns), minute(self.range.end_ns)),
        }
    }
}

/// `YYYY-MM-DDTHH:MM` of a time, as a browser's `datetime-local` input shows it (UTC).
pub(crate) fn minute(ns: i64) -> String {
    let text = format_time(ns);
    text.get(..16).unwrap_or(&text).to_owned()
}

fn time(name: &str, value: &str) -> Result<i64, UiError> {
    // A browser's datetime-local input sends `2026-12-01T10:00` (or with seconds), without a zone.
    let with_zone = match value.len() {
        16 if value.as_bytes()[13] == b':' => format!("{value}:00Z"),
        19 if value.as_bytes()[13] == b':' => format!("{value}Z"),
        _ => value.to_owned(),
    };
    parse_time(&with_zone).map_err(|e| UiError::BadParameter(format!("{name}: {e}")))
}

/// Builds `path?k=v&...` with every value URL-encoded.
pub(crate) fn href<'a>(path: &str, pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    let mut any = false;
    for (key, value) in pairs {
        query.append_pair(key, value);
        any = true;
    }
    if any { format!("{path}?{}", query.finish()) } else { path.to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    const NOW: i64 = 1_764_000_000_000_000_000;

    #[test]
    fn presets_end_now() {
        let w = Window::from_params(&params(&[]), NOW).unwrap();
        assert_eq!(w.range, TimeRange { start_ns: NOW - 3_600_000_000_000, end_ns: NOW });
        assert_eq!(w.query_pairs(), vec![("range", "1h".to_owned())]);
        let w = Window::from_params(&params(&[("range", "15m")]), NOW).unwrap();
        assert_eq!(w.range.end_ns - w.range.start_ns, 900_000_000_000);
    }

    #[test]
    fn custom_ranges_round_trip_through_their_links() {
        let w = Window::from_params(
            &params(&[("range", "custom"), ("start", "2025-11-24T10:00"), ("end", "2025-11-24T11:30:00Z")]),
            NOW,
        )
        .unwrap();
        assert_eq!(w.range.end_ns - w.range.start_ns, 5_400_000_000_000);
        assert_eq!(w.describe(), "2025-11-24T10:00 – 2025-11-24T11:30 UTC");
        let again: HashMap<String, String> = w.query_pairs().into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        assert_eq!(Window::from_params(&again, NOW).unwrap(), w);
    }

    #[test]
    fn bad_ranges_name_the_parameter() {
        for (pairs, expect) in [
            (&[("range", "7y")][..], "range: expected"),
            (&[("range", "custom"), ("start", "2025-11-24T10:00")][..], "start: a custom range needs both"),
            (&[("range", "custom"), ("start", "yesterday"), ("end", "2025-11-24T10:00")][..], "start: expected"),
            (&[("start", "2025-11-24T11:00"), ("end", "2025-11-24T10:00")][..], "start: must be before end"),
            (&[("range", "1h"), ("start", "2025-11-24T10:00")][..], "range: \"1h\" ends now"),
        ] {
            let err = Window::from_params(&params(pairs), NOW).unwrap_err().to_string();
            assert!(err.starts_with(expect), "{pairs:?}: {err}");
        }
    }

    #[test]
    fn links_encode_their_values() {
        assert_eq!(href("/ui/service", [("name", "a b&c"), ("range", "1h")]), "/ui/service?name=a+b%26c&range=1h");
        assert_eq!(href("/ui/graph", []), "/ui/graph");
    }
}
