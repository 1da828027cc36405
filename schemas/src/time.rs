//! Times and durations as hopscope's API, UI and command line take and show them: times as RFC 3339
//! or unix nanoseconds, durations as `250ms`/`1.5s`, and the half-open ranges analyses cover.

use chrono::DateTime;

/// The range a request covers when it names none: the last hour.
pub const DEFAULT_RANGE_NS: i64 = 3_600 * 1_000_000_000;

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

/// Now, by this machine's clock, in milliseconds since the Unix epoch (0 before it).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
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

/// RFC 3339 with nanoseconds, UTC (`2026-11-28T10:00:00.000000000Z`).
pub fn format_time(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns).to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
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
}
