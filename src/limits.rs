//! Per-tenant limits (`--tenant-limits FILE`): the rate at which a tenant may send spans, the memory
//! its exports and buffer may hold, and its retention, each overriding the server's flags for
//! every tenant (`[defaults]`) or for one (`[tenant.NAME]`). Read at start (a file that does not
//! load stops the server with the line at fault) and again on SIGHUP, when open tenants take the
//! new limits at once.
//!
//! ```toml
//! [defaults]
//! spans_per_second = 20000      # "off" (the default): no rate limit
//! burst_spans = 40000           # default: two seconds' worth
//! max_buffered_bytes = "256MiB" # default: --max-buffered-bytes
//! retention_age = "14d"         # default: --retention-age; "off" keeps everything
//! retention_max_bytes = "50GiB" # default: --retention-max-bytes
//!
//! [tenant.team-a]
//! spans_per_second = 50000
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hopscope_ingest::limits::{RateLimit, TenantLimits};
use hopscope_schemas::layout;
use serde::Deserialize;
use toml::Spanned;

use crate::config_file;

/// A setting as written: a number, or text (a size, a duration, `off`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Setting {
    Number(f64),
    Text(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct OverridesShape {
    spans_per_second: Option<Spanned<Setting>>,
    burst_spans: Option<Spanned<Setting>>,
    max_buffered_bytes: Option<Spanned<Setting>>,
    retention_age: Option<Spanned<Setting>>,
    retention_max_bytes: Option<Spanned<Setting>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileShape {
    #[serde(default)]
    defaults: OverridesShape,
    #[serde(default)]
    tenant: BTreeMap<Spanned<String>, OverridesShape>,
}

/// What one table of the file sets; `None` leaves the value to the level below it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Overrides {
    spans_per_second: Option<Option<f64>>,
    burst_spans: Option<f64>,
    max_buffered_bytes: Option<usize>,
    retention_age: Option<Option<Duration>>,
    retention_max_bytes: Option<Option<u64>>,
}

/// The limits of a `--tenant-limits` file.
#[derive(Debug, Clone)]
pub(crate) struct LimitsConfig {
    path: PathBuf,
    defaults: Overrides,
    tenants: BTreeMap<String, Overrides>,
}

impl LimitsConfig {
    /// Reads and checks the file; the error names the file and the line at fault.
    pub(crate) fn load(path: &Path) -> Result<Self, String> {
        config_file::read(path, "the tenant limits", |text| Self::parse(text, path))
    }

    fn parse(text: &str, path: &Path) -> Result<Self, String> {
        let shape: FileShape = config_file::toml(text)?;
        let line = |offset: usize| config_file::line_at(text, offset);
        let defaults = overrides(&shape.defaults, &line)?;
        let mut tenants = BTreeMap::new();
        for (name, table) in &shape.tenant {
            layout::validate_tenant(name.get_ref())
                .map_err(|e| format!("line {}: [tenant.{}]: {e}", line(name.span().start), name.get_ref()))?;
            tenants.insert(name.get_ref().clone(), overrides(table, &line)?);
        }
        Ok(Self { path: path.to_owned(), defaults, tenants })
    }

    /// The file it was read from (read again on SIGHUP).
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The limits of `tenant`: the server's flags (`base`), then `[defaults]`, then its own table.
    pub(crate) fn limits_for(&self, tenant: &str, base: &TenantLimits) -> TenantLimits {
        let mut limits = *base;
        let mut rate = base.rate.map(|r| r.spans_per_second);
        let mut burst = base.rate.map(|r| r.burst_spans);
        for layer in std::iter::once(&self.defaults).chain(self.tenants.get(tenant)) {
            if let Some(value) = layer.spans_per_second {
                rate = value;
                burst = None;
            }
            if let Some(value) = layer.burst_spans {
                burst = Some(value);
            }
            if let Some(value) = layer.max_buffered_bytes {
                limits.max_buffered_bytes = value;
            }
            if let Some(value) = layer.retention_age {
                limits.retention.max_age = value;
            }
            if let Some(value) = layer.retention_max_bytes {
                limits.retention.max_bytes = value;
            }
        }
        limits.rate = rate.map(|spans_per_second| RateLimit {
            spans_per_second,
            burst_spans: burst.unwrap_or(2.0 * spans_per_second).max(1.0),
        });
        limits
    }
}

/// A table's settings, checked.
fn overrides(shape: &OverridesShape, line: &dyn Fn(usize) -> usize) -> Result<Overrides, String> {
    let at =
        |setting: &Spanned<Setting>, name: &str, e: String| format!("line {}: {name}: {e}", line(setting.span().start));
    let mut out = Overrides::default();
    if let Some(setting) = &shape.spans_per_second {
        out.spans_per_second = Some(match setting.get_ref() {
            Setting::Text(off) if off == "off" => None,
            Setting::Number(n) if *n > 0.0 && n.is_finite() => Some(*n),
            other => {
                return Err(at(
                    setting,
                    "spans_per_second",
                    format!("expected a positive number or \"off\", got {other:?}"),
                ));
            }
        });
    }
    if let Some(setting) = &shape.burst_spans {
        out.burst_spans = Some(match setting.get_ref() {
            Setting::Number(n) if *n >= 1.0 && n.is_finite() => *n,
            other => return Err(at(setting, "burst_spans", format!("expected a number of at least 1, got {other:?}"))),
        });
    }
    if let Some(setting) = &shape.max_buffered_bytes {
        out.max_buffered_bytes = Some(match bytes(setting.get_ref()) {
            Ok(Some(n)) => usize::try_from(n).map_err(|_| at(setting, "max_buffered_bytes", "too large".to_owned()))?,
            Ok(None) => return Err(at(setting, "max_buffered_bytes", "cannot be \"off\"".to_owned())),
            Err(e) => return Err(at(setting, "max_buffered_bytes", e)),
        });
    }
    if let Some(setting) = &shape.retention_age {
        out.retention_age = Some(match setting.get_ref() {
            Setting::Text(text) => crate::optional_duration(text).map_err(|e| at(setting, "retention_age", e))?,
            other => {
                return Err(at(
                    setting,
                    "retention_age",
                    format!("expected a duration such as \"14d\" or \"off\", got {other:?}"),
                ));
            }
        });
    }
    if let Some(setting) = &shape.retention_max_bytes {
        out.retention_max_bytes = Some(bytes(setting.get_ref()).map_err(|e| at(setting, "retention_max_bytes", e))?);
    }
    Ok(out)
}

/// A size: a whole number of bytes, or text such as `256MiB`, or `off`.
fn bytes(setting: &Setting) -> Result<Option<u64>, String> {
    match setting {
        Setting::Number(n) if *n >= 1.0 && n.fract() == 0.0 && *n < u64::MAX as f64 => Ok(Some(*n as u64)),
        Setting::Number(n) => Err(format!("expected a whole number of bytes, got {n}")),
        Setting::Text(text) => crate::optional_bytes(text),
    }
}

#[cfg(test)]
mod tests {
    use hopscope_ingest::retention::RetentionPolicy;

    use super::*;

    fn parse(text: &str) -> Result<LimitsConfig, String> {
        LimitsConfig::parse(text, Path::new("limits.toml"))
    }

    const BASE: TenantLimits = TenantLimits {
        max_buffered_bytes: 512 << 20,
        retention: RetentionPolicy { max_age: None, max_bytes: Some(1000) },
        rate: None,
    };

    #[test]
    fn a_tenant_takes_its_own_table_over_the_defaults_over_the_flags() {
        let config = parse(
            "[defaults]\nspans_per_second = 100\nretention_age = \"1d\"\n\n[tenant.team-a]\nspans_per_second = 5\n\
             burst_spans = 7\nmax_buffered_bytes = \"1MiB\"\nretention_max_bytes = \"off\"\n\n[tenant.team-b]\n\
             spans_per_second = \"off\"\n",
        )
        .unwrap();
        let a = config.limits_for("team-a", &BASE);
        assert_eq!(a.rate, Some(RateLimit { spans_per_second: 5.0, burst_spans: 7.0 }));
        assert_eq!(a.max_buffered_bytes, 1 << 20);
        assert_eq!(a.retention, RetentionPolicy { max_age: Some(Duration::from_secs(86_400)), max_bytes: None });
        let b = config.limits_for("team-b", &BASE);
        assert_eq!(b.rate, None);
        assert_eq!(b.retention.max_bytes, Some(1000));
        let other = config.limits_for("anyone", &BASE);
        assert_eq!(other.rate, Some(RateLimit { spans_per_second: 100.0, burst_spans: 200.0 }));
        assert_eq!(other.max_buffered_bytes, 512 << 20);
    }

    /// Any limits file is read or refused, never a panic.
    #[test]
    fn fuzz_tenant_limits_file() {
        let seeds = vec![
            b"[defaults]\nspans_per_second = 100\nburst_spans = 7\nmax_buffered_bytes = \"1MiB\"\nretention_age = \"1d\"\n\n[tenant.a]\nretention_max_bytes = \"off\"\n".to_vec(),
        ];
        let tokens: &[&[u8]] =
            &[b"[tenant.", b"]", b"\n", b"\"", b"=", b"1e309", b"-0", b"GiB", b"off", b"18446744073709551616"];
        hopscope_fuzz::run(
            "tenant-limits",
            seeds,
            tokens,
            &|input: &[u8]| match parse(&String::from_utf8_lossy(input)) {
                Ok(config) => {
                    let _ = config.limits_for("a", &BASE);
                    true
                }
                Err(_) => false,
            },
        );
    }

    #[test]
    fn a_bad_setting_is_refused_with_the_line_at_fault() {
        let cases = [
            ("[defaults]\nspans_per_second = -1\n", "line 2: spans_per_second"),
            ("[defaults]\n\nmax_buffered_bytes = \"lots\"\n", "line 3: max_buffered_bytes"),
            ("[tenant.\"a/b\"]\nspans_per_second = 1\n", "line 1: [tenant.a/b]"),
            ("[tenant.a]\nretention_age = 5\n", "line 2: retention_age"),
            ("[defaults]\nspans_per_secnd = 1\n", "line 2"),
        ];
        for (text, expected) in cases {
            let error = parse(text).unwrap_err();
            assert!(error.contains(expected), "{text:?}: {error:?} lacks {expected:?}");
        }
    }
}
