//! Parsing and checking API parameters: times as RFC 3339 or unix nanoseconds, durations as
//! `250ms`/`1.5s`. Every error names the parameter.

use std::collections::HashMap;

use chrono::Utc;
use hopscope_schemas::time::{DEFAULT_RANGE_NS, TimeRange, format_time, parse_duration, parse_time};

use crate::QueryError;

/// The query parameters of a request, checked against what the endpoint accepts.
#[derive(Debug)]
pub(crate) struct Params {
    values: HashMap<String, String>,
}

fn bad(name: &str, message: impl std::fmt::Display) -> QueryError {
    QueryError::BadParameter(format!("{name}: {message}"))
}

impl Params {
    /// Refuses any parameter not in `allowed` (names ending in `.` allow any suffix, as `attr.`).
    pub(crate) fn new(values: HashMap<String, String>, allowed: &[&str]) -> Result<Self, QueryError> {
        let mut unknown: Vec<&str> = values
            .keys()
            .map(String::as_str)
            .filter(|k| {
                !allowed.iter().any(|a| if a.ends_with('.') { k.starts_with(a) && k.len() > a.len() } else { k == a })
            })
            .collect();
        if !unknown.is_empty() {
            unknown.sort_unstable();
            let takes = if allowed.is_empty() {
                "no parameters".to_owned()
            } else {
                allowed
                    .iter()
                    .map(|a| if a.ends_with('.') { format!("{a}KEY") } else { (*a).to_owned() })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(QueryError::BadParameter(format!(
                "unknown parameter {}; this endpoint takes {takes}",
                unknown.join(", ")
            )));
        }
        Ok(Self { values })
    }

    /// A non-empty string parameter.
    pub(crate) fn text(&self, name: &str) -> Result<Option<&str>, QueryError> {
        match self.values.get(name) {
            None => Ok(None),
            Some(v) if v.is_empty() => Err(bad(name, "must not be empty")),
            Some(v) => Ok(Some(v)),
        }
    }

    /// Parameters `PREFIX.KEY=VALUE`, as (KEY, VALUE), sorted by key.
    pub(crate) fn prefixed(&self, prefix: &str) -> Vec<(&str, &str)> {
        let mut out: Vec<(&str, &str)> =
            self.values.iter().filter_map(|(k, v)| Some((k.strip_prefix(prefix)?, v.as_str()))).collect();
        out.sort_unstable();
        out
    }

    pub(crate) fn time(&self, name: &str) -> Result<Option<i64>, QueryError> {
        self.text(name)?.map(|v| parse_time(v).map_err(|e| bad(name, e))).transpose()
    }

    pub(crate) fn duration(&self, name: &str) -> Result<Option<i64>, QueryError> {
        self.text(name)?.map(|v| parse_duration(v).map_err(|e| bad(name, e))).transpose()
    }

    pub(crate) fn boolean(&self, name: &str) -> Result<Option<bool>, QueryError> {
        self.text(name)?
            .map(|v| match v {
                "true" | "1" => Ok(true),
                "false" | "0" => Ok(false),
                other => Err(bad(name, format!("expected true or false, got {other:?}"))),
            })
            .transpose()
    }

    /// An integer in `1..=max`.
    pub(crate) fn count(&self, name: &str, max: usize) -> Result<Option<usize>, QueryError> {
        self.text(name)?
            .map(|v| match v.parse::<usize>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => Err(bad(name, format!("expected a whole number from 1 to {max}, got {v:?}"))),
            })
            .transpose()
    }

    /// A finite number of at least `min`.
    pub(crate) fn number(&self, name: &str, min: f64) -> Result<Option<f64>, QueryError> {
        self.text(name)?
            .map(|v| match v.parse::<f64>() {
                Ok(n) if n.is_finite() && n >= min => Ok(n),
                _ => Err(bad(name, format!("expected a number of at least {min}, got {v:?}"))),
            })
            .transpose()
    }

    /// One of a fixed set of words.
    pub(crate) fn choice<'a>(&self, name: &str, choices: &[&'a str]) -> Result<Option<&'a str>, QueryError> {
        self.text(name)?
            .map(|v| {
                choices
                    .iter()
                    .find(|c| **c == v)
                    .copied()
                    .ok_or_else(|| bad(name, format!("expected one of {}, got {v:?}", choices.join(", "))))
            })
            .transpose()
    }

    /// The `start`/`end` range: `end` defaults to now and `start` to an hour before `end`.
    pub(crate) fn range(&self) -> Result<TimeRange, QueryError> {
        let end = match self.time("end")? {
            Some(end) => end,
            None => Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX),
        };
        let start = self.time("start")?.unwrap_or(end.saturating_sub(DEFAULT_RANGE_NS));
        if start >= end {
            return Err(QueryError::BadParameter(format!(
                "start: must be before end (start {}, end {})",
                format_time(start),
                format_time(end)
            )));
        }
        Ok(TimeRange { start_ns: start, end_ns: end })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_parameters_are_named() {
        let values = HashMap::from([("servce".to_owned(), "x".to_owned())]);
        let err = Params::new(values, &["service", "attr."]).unwrap_err().to_string();
        assert!(err.contains("servce"), "{err}");
        let values = HashMap::from([("attr.http.route".to_owned(), "/x".to_owned())]);
        let params = Params::new(values, &["service", "attr."]).unwrap();
        assert_eq!(params.prefixed("attr."), vec![("http.route", "/x")]);
    }

    /// Any query string is read or refused parameter by parameter, never a panic.
    #[test]
    fn fuzz_api_parameters() {
        let seeds = [
            "start=2026-12-01T10:00:00Z&end=1764900000000000000&min_duration=1.5ms&limit=20&sort=slowest&status=error&attr.http.route=%2Fx&exact=true&unbounded_tail_ratio=0.5",
        ];
        let tokens: &[&[u8]] = &[
            b"&",
            b"=",
            b"%",
            b"%ff",
            b"+",
            b"attr.",
            b"start=",
            b"-",
            b"9223372036854775808",
            b"e309",
            b"ns",
            b"\xc2\xb5s",
            b"T",
            b"Z",
        ];
        let seeds = seeds.iter().map(|s| s.as_bytes().to_vec()).collect();
        let all = [
            "start",
            "end",
            "min_duration",
            "max_duration",
            "limit",
            "sort",
            "status",
            "attr.",
            "exact",
            "unbounded_tail_ratio",
            "step",
        ];
        hopscope_fuzz::run("api-parameters", seeds, tokens, &|input: &[u8]| {
            // Split as a query string is (percent-decoding is the web framework's, not ours).
            let values: HashMap<String, String> = String::from_utf8_lossy(input)
                .split('&')
                .filter_map(|pair| pair.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
                .collect();
            let Ok(p) = Params::new(values, &all) else { return false };
            let read = [
                p.range().is_ok(),
                p.duration("min_duration").is_ok(),
                p.count("limit", 1_000).is_ok(),
                p.number("unbounded_tail_ratio", 1.0).is_ok(),
                p.boolean("exact").is_ok(),
                p.choice("sort", &["newest", "slowest"]).is_ok(),
                p.text("status").is_ok(),
            ];
            let _ = p.prefixed("attr.");
            read.iter().all(|ok| *ok)
        });
    }
}
