//! Parameters as the peers' APIs take them (Jaeger's and Tempo's): repeatable names, trace ids of
//! 1 to 32 hex digits, durations as Go writes them, attribute conditions as JSON or logfmt. Every
//! error names the parameter; each API turns it into its own error shape.

use axum::extract::Query;
use axum::extract::rejection::QueryRejection;
use hopscope_schemas::TraceId;
use hopscope_schemas::time::{TimeRange, parse_duration};
use serde_json::Value;

use crate::QueryError;

pub(crate) type RawParams = Result<Query<Vec<(String, String)>>, QueryRejection>;

fn bad(name: &str, message: impl std::fmt::Display) -> QueryError {
    QueryError::BadParameter(format!("{name}: {message}"))
}

/// The query parameters of a request, in order; some (Jaeger's `traceID` and `tags`) may repeat.
pub(crate) struct Params(Vec<(String, String)>);

impl Params {
    /// Refuses any parameter the endpoint does not take, naming it and what it takes.
    pub(crate) fn new(raw: RawParams, allowed: &[&str]) -> Result<Self, QueryError> {
        let Query(values) = raw.map_err(|e| bad("query string", e.body_text()))?;
        if let Some((unknown, _)) = values.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
            let takes = if allowed.is_empty() { "no parameters".to_owned() } else { allowed.join(", ") };
            return Err(QueryError::BadParameter(format!("unknown parameter {unknown}; this endpoint takes {takes}")));
        }
        Ok(Params(values))
    }

    pub(crate) fn all(&self, name: &str) -> Vec<&str> {
        self.0.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str()).collect()
    }

    /// A parameter given at most once; empty counts as not given, as Jaeger reads it.
    pub(crate) fn one(&self, name: &str) -> Result<Option<&str>, QueryError> {
        let mut values = self.all(name).into_iter().filter(|v| !v.is_empty());
        let first = values.next();
        if values.next().is_some() {
            return Err(bad(name, "given more than once"));
        }
        Ok(first)
    }

    pub(crate) fn integer(&self, name: &str) -> Result<Option<i64>, QueryError> {
        self.one(name)?
            .map(|v| v.parse::<i64>().map_err(|_| bad(name, format!("expected a whole number, got {v:?}"))))
            .transpose()
    }

    /// Microseconds since the epoch, as nanoseconds.
    pub(crate) fn micros(&self, name: &str) -> Result<Option<i64>, QueryError> {
        self.integer(name)?
            .map(|us| us.checked_mul(1_000).ok_or_else(|| bad(name, format!("{us} µs is out of range"))))
            .transpose()
    }

    /// `endTs` and `lookback` in milliseconds, as Zipkin's and Jaeger's dependency and Zipkin's
    /// search APIs take them: the `lookback` (`default_lookback_ms` unless given) before `endTs`
    /// (now unless given), ending at `endTs`.
    pub(crate) fn end_ts_range(&self, default_lookback_ms: i64) -> Result<TimeRange, QueryError> {
        let end_ms = self.integer("endTs")?.unwrap_or_else(|| chrono::Utc::now().timestamp_millis());
        let lookback_ms = self.integer("lookback")?.unwrap_or(default_lookback_ms);
        if lookback_ms <= 0 {
            return Err(bad("lookback", format!("expected a positive number of milliseconds, got {lookback_ms}")));
        }
        let end_ns =
            end_ms.checked_mul(1_000_000).ok_or_else(|| bad("endTs", format!("{end_ms} ms is out of range")))?;
        Ok(TimeRange { start_ns: end_ns.saturating_sub(lookback_ms.saturating_mul(1_000_000)), end_ns })
    }

    pub(crate) fn go_duration(&self, name: &str) -> Result<Option<i64>, QueryError> {
        self.one(name)?.map(|v| go_duration(v).map_err(|e| bad(name, e))).transpose()
    }

    /// A count such as `limit`: `default` when absent or 0, else 1 to `most`.
    pub(crate) fn bounded(&self, name: &str, default: usize, most: usize) -> Result<usize, QueryError> {
        match self.integer(name)? {
            None | Some(0) => Ok(default),
            Some(n) if n > 0 && n as u64 <= most as u64 => Ok(n as usize),
            Some(n) => Err(bad(name, format!("expected a whole number from 1 to {most}, got {n}"))),
        }
    }

    pub(crate) fn pretty(&self) -> bool {
        matches!(self.one("prettyPrint"), Ok(Some("true" | "1")))
    }
}

/// Checks that a duration range (`minDuration` to `maxDuration`) is not empty.
pub(crate) fn duration_bounds(min: Option<i64>, max: Option<i64>) -> Result<(), QueryError> {
    match (min, max) {
        (Some(min), Some(max)) if min > max => Err(bad("minDuration", "must not exceed maxDuration")),
        _ => Ok(()),
    }
}

/// A duration as Go's `time.ParseDuration` reads it: one or more decimal numbers, each with a unit
/// (`ns`, `us`, `µs`, `ms`, `s`, `m`, `h`), as in `1.5s` or `1m30s`. Days (`d`) are also taken.
pub(crate) fn go_duration(value: &str) -> Result<i64, String> {
    let mut total: i64 = 0;
    let mut rest = value;
    if rest.is_empty() {
        return Err("expected a duration such as 250ms or 1m30s".into());
    }
    while !rest.is_empty() {
        let number = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let unit = rest[number..].find(|c: char| c.is_ascii_digit() || c == '.').map_or(rest.len(), |u| number + u);
        let part = parse_duration(&rest[..unit]).map_err(|e| format!("{e} (in {value:?})"))?;
        total = total.checked_add(part).ok_or_else(|| format!("{value:?} is too long"))?;
        rest = &rest[unit..];
    }
    Ok(total)
}

/// A trace id of 1 to 32 hex digits, as Jaeger and Tempo take it (shorter ids are padded with zeros).
pub(crate) fn trace_id(text: &str) -> Result<TraceId, QueryError> {
    if text.is_empty() || text.len() > 32 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad("traceID", format!("expected 1 to 32 hex digits, got {text:?}")));
    }
    format!("{text:0>32}").parse().map_err(|e| bad("traceID", e))
}

/// Attribute conditions given in one parameter (Jaeger's `tags`): a JSON object of strings (`{"http.status_code":"500"}`, what the Jaeger UI
/// and Grafana send) or logfmt (`http.status_code=500 error=true`).
pub(crate) fn tags_param(name: &str, text: &str) -> Result<Vec<(String, String)>, QueryError> {
    if text.trim_start().starts_with('{') {
        let object: serde_json::Map<String, Value> =
            serde_json::from_str(text).map_err(|e| bad(name, format!("not a JSON object: {e}")))?;
        return object
            .into_iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k, s)),
                Value::Number(_) | Value::Bool(_) => Ok((k, v.to_string())),
                other => Err(bad(name, format!("the value of {k:?} must be a string, got {other}"))),
            })
            .collect();
    }
    logfmt(text).map_err(|e| bad(name, e))
}

/// `key=value` pairs separated by spaces; values may be double-quoted (with `\"` and `\\`).
fn logfmt(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(out);
        }
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=' && !c.is_whitespace())).collect();
        if chars.next() != Some('=') || key.is_empty() {
            return Err(format!("expected key=value pairs (logfmt) or a JSON object, got {text:?}"));
        }
        let mut value = String::new();
        if chars.next_if_eq(&'"').is_some() {
            loop {
                match chars.next() {
                    Some('"') => break,
                    Some('\\') => value.push(chars.next().ok_or_else(|| format!("unfinished escape in {text:?}"))?),
                    Some(c) => value.push(c),
                    None => return Err(format!("unclosed quote in {text:?}")),
                }
            }
        } else {
            value.extend(std::iter::from_fn(|| chars.next_if(|c| !c.is_whitespace())));
        }
        out.push((key, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(go_duration("1.5s"), Ok(1_500_000_000));
        assert_eq!(go_duration("1m30s"), Ok(90_000_000_000));
        assert_eq!(go_duration("1h2m3.5s"), Ok(3_723_500_000_000));
        assert_eq!(go_duration("500us"), Ok(500_000));
        assert_eq!(go_duration("500µs"), Ok(500_000));
        assert_eq!(go_duration("2d"), Ok(172_800_000_000_000));
        assert!(go_duration("").is_err());
        assert!(go_duration("100").unwrap_err().contains("unit"), "{:?}", go_duration("100"));
        assert!(go_duration("1s2x").is_err());
    }

    #[test]
    fn trace_ids_take_1_to_32_hex_digits() {
        assert_eq!(trace_id("abc").unwrap().to_hex(), "00000000000000000000000000000abc");
        let full = "0af7651916cd43dd8448eb211c80319c";
        assert_eq!(trace_id(full).unwrap().to_hex(), full);
        for bad in ["", "xyz", "0af7651916cd43dd8448eb211c80319c0"] {
            let failure = trace_id(bad).unwrap_err();
            assert!(matches!(failure, QueryError::BadParameter(_)), "{failure}");
            assert!(failure.to_string().contains("traceID"), "{failure}");
        }
    }

    #[test]
    fn tags_as_json_or_logfmt() {
        let json = tags_param("tags", r#"{"http.status_code":"500","retry":true}"#).unwrap();
        assert_eq!(json, [("http.status_code".into(), "500".into()), ("retry".into(), "true".into())]);
        let logfmt = tags_param("tags", r#"http.route=/cart  note="a \"quoted\" value" error=true"#).unwrap();
        assert_eq!(
            logfmt,
            [
                ("http.route".into(), "/cart".into()),
                ("note".into(), "a \"quoted\" value".into()),
                ("error".into(), "true".into())
            ]
        );
        for bad in [r#"{"a": [1]}"#, "{not json", "novalue", r#"k="open"#] {
            let failure = tags_param("tags", bad).unwrap_err();
            assert!(failure.to_string().starts_with("tags: "), "{bad}: {failure}");
        }
    }

    /// Any text given as a duration, tags or a trace id is read or refused, never a panic.
    #[test]
    fn fuzz_peer_parameters() {
        let seeds = [
            "1h2m3.5s",
            r#"{"http.status_code":"500","retry":true}"#,
            r#"a=/b note="q \"x\"" c=1"#,
            "0af7651916cd43dd",
        ];
        let tokens: &[&[u8]] =
            &[b"=", b"\"", b"\\", b"{", b"}", b"ms", b"\xc2\xb5s", b"h", b".", b"9999999999999999999"];
        let seeds = seeds.iter().map(|s| s.as_bytes().to_vec()).collect();
        hopscope_fuzz::run("peer-parameters", seeds, tokens, &|input: &[u8]| {
            let text = String::from_utf8_lossy(input);
            let read = [go_duration(&text).is_ok(), tags_param("tags", &text).is_ok(), trace_id(&text).is_ok()];
            read.contains(&true)
        });
    }
}
