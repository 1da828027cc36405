//! Parsing and checking API parameters: times as RFC 3339 or unix nanoseconds, durations as
//! `250ms`/`1.5s`. Every error names the parameter.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use crate::QueryError;

/// The range a request covers when it names none: the last hour.
pub const DEFAULT_RANGE_NS: i64 = 3_600 * 1_000_000_000;

/// The query parameters of a request, checked against what the endpoint accepts.
#[derive(Debug)]
pub struct Params {
    values: HashMap<String, String>,
}

fn bad(name: &str, message: impl std::fmt::Display) -> QueryError {
    QueryError::BadParameter(format!("{name}: {message}"))
}

impl Params {
    /// Refuses any parameter not in `allowed` (names ending in `.` allow any suffix, as `attr.`).
    pub fn new(values: HashMap<String, String>, allowed: &[&str]) -> Result<Self, QueryError> {
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
    pub fn text(&self, name: &str) -> Result<Option<&str>, QueryError> {
        match self.values.get(name) {
            None => Ok(None),
            Some(v) if v.is_empty() => Err(bad(name, "must not be empty")),
            Some(v) => Ok(Some(v)),
        }
    }

    /// Parameters `PREFIX.KEY=VALUE`, as (KEY, VALUE), sorted by key.
    pub fn prefixed(&self, prefix: &str) -> Vec<(&str, &str)> {
        let mut out: Vec<(&str, &str)> =
            self.values.iter().filter_map(|(k, v)| Some((k.strip_prefix(prefix)?, v.as_str()))).collect();
        out.sort_unstable();
        out
    }

    pub fn time(&self, name: &str) -> Result<Option<i64>, QueryError> {
        self.text(name)?.map(|v| parse_time(v).map_err(|e| bad(name, e))).transpose()
    }

    pub fn duration(&self, name: &str) -> Result<Option<i64>, QueryError> {
        self.text(name)?.map(|v| parse_duration(v).map_err(|e| bad(name, e))).transpose()
    }

    pub fn boolean(&self, name: &str) -> Result<Option<bool>, QueryError> {
        self.text(name)?
            .map(|v| match v {
                "true" | "1" => Ok(true),
                "false" | "0" => Ok(false),
                other => Err(bad(name, format!("expected true or false, got {other:?}"))),
            })
            .transpose()
    }

    /// An integer in `1..=max`.
    pub fn count(&self, name: &str, max: usize) -> Result<Option<usize>, QueryError> {
        self.text(name)?
            .map(|v| match v.parse::<usize>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => Err(bad(name, format!("expected a whole number from 1 to {max}, got {v:?}"))),
            })
            .transpose()
    }

    /// A finite number of at least `min`.
    pub fn number(&self, name: &str, min: f64) -> Result<Option<f64>, QueryError> {
        self.text(name)?
            .map(|v| match v.parse::<f64>() {
                Ok(n) if n.is_finite() && n >= min => Ok(n),
                _ => Err(bad(name, format!("expected a number of at least {min}, got {v:?}"))),
            })
            .transpose()
    }

    /// One of a fixed set of words.
    pub fn choice<'a>(&self, name: &str, choices: &[&'a str]) -> Result<Option<&'a str>, QueryError> {
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
    pub fn range(&self) -> Result<TimeRange, QueryError> {
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

/// A half-open time range `[start, end)` in unix nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeRange {
    pub start_ns: i64,
    pub end_ns: i64,
}

impl TimeRange {
    pub fn seconds(&self) -> f64 {
        (self.end_ns - self.start_ns) as f64 / 1e9
    }
}

/// RFC 3339 (`2026-11-28T10:00:00Z`) or integer unix nanoseconds.
pub fn parse_time(value: &str) -> Result<i64, String> {
    if let Ok(ns) = value.parse::<i64>() {
        return Ok(ns);
    }
    let time = DateTime::parse_from_rfc3339(value)
        .map_err(|e| format!("expected an RFC 3339 time or unix nanoseconds, got {value:?} ({e})"))?;
    time.timestamp_nanos_opt().ok_or_else(|| format!("{value:?} is outside the range of nanosecond timestamps"))
}

/// `250ms`, `1.5s`, `2m`, `1h`, `300us`, `40ns`, `1d` → nanoseconds.
pub fn parse_duration(value: &str) -> Result<i64, String> {
    let split = value.find(|ch: char| !(ch.is_ascii_digit() || ch == '.')).unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let scale: f64 = match unit {
        "ns" => 1.0,
        "us" | "µs" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        "m" => 60e9,
        "h" => 3_600e9,
        "d" => 86_400e9,
        "" => return Err(format!("{value:?} needs a unit: ns, us, ms, s, m, h or d (as in 250ms or 1.5s)")),
        other => return Err(format!("unknown unit {other:?} in {value:?}; use ns, us, ms, s, m, h or d")),
    };
    let number: f64 =
        number.parse().map_err(|_| format!("expected a duration such as 250ms or 1.5s, got {value:?}"))?;
    let ns = number * scale;
    if !ns.is_finite() || ns > i64::MAX as f64 {
        return Err(format!("{value:?} is too long"));
    }
    Ok(ns.round() as i64)
}

/// RFC 3339 with nanoseconds, UTC.
pub fn format_time(ns: i64) -> String {
    crate::rows::rfc3339_nanos(ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(250_000_000));
        assert_eq!(parse_duration("1.5s"), Ok(1_500_000_000));
        assert_eq!(parse_duration("2m"), Ok(120_000_000_000));
        assert_eq!(parse_duration("40ns"), Ok(40));
        assert!(parse_duration("250").unwrap_err().contains("needs a unit"));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("ms").is_err());
    }

    #[test]
    fn times() {
        assert_eq!(parse_time("1700000000000000000"), Ok(1_700_000_000_000_000_000));
        assert_eq!(parse_time("2023-11-14T22:13:20Z"), Ok(1_700_000_000_000_000_000));
        assert_eq!(parse_time("2023-11-14T23:13:20.5+01:00"), Ok(1_700_000_000_500_000_000));
        assert!(parse_time("yesterday").is_err());
    }

    #[test]
    fn unknown_parameters_are_named() {
        let values = HashMap::from([("servce".to_owned(), "x".to_owned())]);
        let err = Params::new(values, &["service", "attr."]).unwrap_err().to_string();
        assert!(err.contains("servce"), "{err}");
        let values = HashMap::from([("attr.http.route".to_owned(), "/x".to_owned())]);
        let params = Params::new(values, &["service", "attr."]).unwrap();
        assert_eq!(params.prefixed("attr."), vec![("http.route", "/x")]);
    }
}
