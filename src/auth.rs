//! Tokens (`--auth-config FILE`): who may send spans, read them and administer the server, and for
//! which tenant.
//!
//! The file lists tokens by their SHA-256, never the tokens themselves, each bound to one tenant and
//! to scopes:
//!
//! ```toml
//! [[token]]
//! sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//! tenant = "team-a"
//! scopes = ["write", "read"]
//! ```
//!
//! A request presents its token as `Authorization: Bearer <token>` (HTTP and gRPC metadata) or as
//! the password of HTTP basic auth (what Grafana's data sources and browsers send). The token's
//! tenant is the request's tenant; an `X-Scope-OrgID` that names another is refused. Presented
//! tokens are hashed and compared with every listed hash in constant time.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use hopscope_ingest::IngestError;
use hopscope_schemas::layout;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::config_file;

/// What a token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Send spans (OTLP, Zipkin).
    Write,
    /// Query: the APIs, SQL, the UI.
    Read,
    /// Dead letters and `/metrics`.
    Admin,
}

impl Scope {
    const ALL: [(&'static str, Scope); 3] = [("write", Scope::Write), ("read", Scope::Read), ("admin", Scope::Admin)];

    fn name(self) -> &'static str {
        Scope::ALL.iter().find(|(_, s)| *s == self).map_or("?", |(name, _)| name)
    }
}

/// One listed token: its hash, tenant and scopes.
#[derive(Debug, Clone)]
struct Grant {
    sha256: [u8; 32],
    tenant: String,
    scopes: Vec<Scope>,
}

/// The tokens of an auth file.
#[derive(Debug, Clone)]
pub(crate) struct AuthConfig {
    path: PathBuf,
    grants: Vec<Grant>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileShape {
    #[serde(default)]
    token: Vec<TokenShape>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenShape {
    sha256: toml::Spanned<String>,
    tenant: toml::Spanned<String>,
    scopes: toml::Spanned<Vec<String>>,
}

impl AuthConfig {
    /// Reads and checks the auth file; the error names the file and the line at fault.
    pub(crate) fn load(path: &Path) -> Result<Self, String> {
        config_file::read(path, "the auth file", |text| Self::parse(text, path))
    }

    fn parse(text: &str, path: &Path) -> Result<Self, String> {
        let shape: FileShape = config_file::toml(text)?;
        let line = |offset: usize| config_file::line_at(text, offset);
        let mut grants: Vec<Grant> = Vec::with_capacity(shape.token.len());
        for token in shape.token {
            let at = |span: std::ops::Range<usize>| format!("line {}", line(span.start));
            let hex = token.sha256.get_ref().trim();
            let sha256: [u8; 32] = hex::decode(hex).ok().and_then(|bytes| bytes.try_into().ok()).ok_or_else(|| {
                format!(
                    "{}: sha256 must be 64 hexadecimal digits, the SHA-256 of the token (e.g. `printf %s \"$TOKEN\" | \
                         sha256sum`); got {hex:?}",
                    at(token.sha256.span())
                )
            })?;
            if grants.iter().any(|g| g.sha256 == sha256) {
                return Err(format!("{}: this sha256 is listed twice", at(token.sha256.span())));
            }
            let tenant = token.tenant.get_ref().trim().to_owned();
            layout::validate_tenant(&tenant).map_err(|e| format!("{}: tenant: {e}", at(token.tenant.span())))?;
            let mut scopes = Vec::new();
            for name in token.scopes.get_ref() {
                let scope = Scope::ALL.iter().find(|(n, _)| n == name).map(|(_, s)| *s).ok_or_else(|| {
                    format!("{}: unknown scope {name:?}; scopes are write, read and admin", at(token.scopes.span()))
                })?;
                if !scopes.contains(&scope) {
                    scopes.push(scope);
                }
            }
            if scopes.is_empty() {
                return Err(format!(
                    "{}: a token needs at least one scope (write, read, admin)",
                    at(token.scopes.span())
                ));
            }
            grants.push(Grant { sha256, tenant, scopes });
        }
        if grants.is_empty() {
            return Err("no [[token]] listed: every request would be refused".to_owned());
        }
        Ok(Self { path: path.to_owned(), grants })
    }

    /// The file it was read from (read again on SIGHUP).
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// How many tokens it lists.
    pub(crate) fn tokens(&self) -> usize {
        self.grants.len()
    }

    /// The tenant of the token `headers` present, if that token has `scope`.
    pub(crate) fn authorize(&self, headers: &http::HeaderMap, scope: Scope) -> Result<&str, IngestError> {
        let token = presented_token(headers)?;
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Every listed hash is compared, each in constant time, so that timing says nothing of
        // which (or whether one) matched.
        let mut found = None;
        for grant in &self.grants {
            if constant_time_eq(&grant.sha256, &digest) {
                found = Some(grant);
            }
        }
        let grant =
            found.ok_or_else(|| IngestError::Unauthenticated("the token is not one hopscope knows".to_owned()))?;
        if !grant.scopes.contains(&scope) {
            return Err(IngestError::Forbidden(format!(
                "the token of tenant {:?} may not {} (scope {:?}; it has {})",
                grant.tenant,
                match scope {
                    Scope::Write => "send spans",
                    Scope::Read => "read",
                    Scope::Admin => "administer the server",
                },
                scope.name(),
                grant.scopes.iter().map(|s| s.name()).collect::<Vec<_>>().join(", ")
            )));
        }
        Ok(&grant.tenant)
    }
}

/// The token of `Authorization: Bearer <token>`, or the password of `Authorization: Basic ...`.
fn presented_token(headers: &http::HeaderMap) -> Result<String, IngestError> {
    let missing = || {
        IngestError::Unauthenticated(
            "no token: send `Authorization: Bearer <token>` (or the token as the password of HTTP basic auth)"
                .to_owned(),
        )
    };
    let value = headers.get(http::header::AUTHORIZATION).ok_or_else(missing)?;
    let value =
        value.to_str().map_err(|_| IngestError::Unauthenticated("the Authorization header is not ASCII".to_owned()))?;
    let (scheme, credentials) = value.trim().split_once(' ').ok_or_else(missing)?;
    let credentials = credentials.trim();
    if scheme.eq_ignore_ascii_case("bearer") && !credentials.is_empty() {
        return Ok(credentials.to_owned());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(credentials)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or_else(|| {
                IngestError::Unauthenticated("the basic credentials are not base64 of user:password".to_owned())
            })?;
        return match decoded.split_once(':') {
            Some((_, password)) if !password.is_empty() => Ok(password.to_owned()),
            _ => Err(IngestError::Unauthenticated(
                "basic auth carries the token as its password, and it is empty".to_owned(),
            )),
        };
    }
    Err(IngestError::Unauthenticated(format!(
        "the Authorization scheme {scheme:?} is not one hopscope takes: use Bearer, or Basic with the token as password"
    )))
}

/// Whether `a` and `b` are equal, in time that does not depend on where they differ.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(difference) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SHA-256 of "test", as `printf %s test | sha256sum` prints it (FIPS 180-2 test vectors are of
    /// other strings; this one is widely published, e.g. in the issue's example).
    const TEST_SHA256: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn config(text: &str) -> Result<AuthConfig, String> {
        AuthConfig::parse(text, Path::new("auth.toml"))
    }

    fn headers(authorization: &str) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::AUTHORIZATION, authorization.parse().unwrap());
        headers
    }

    #[test]
    fn a_token_is_found_by_its_hash_with_its_tenant_and_scopes() {
        let auth =
            config(&format!("[[token]]\nsha256 = \"{TEST_SHA256}\"\ntenant = \"team-a\"\nscopes = [\"write\"]\n"))
                .unwrap();
        assert_eq!(auth.authorize(&headers("Bearer test"), Scope::Write).unwrap(), "team-a");
        let basic = base64::engine::general_purpose::STANDARD.encode("grafana:test");
        assert_eq!(auth.authorize(&headers(&format!("Basic {basic}")), Scope::Write).unwrap(), "team-a");
        assert!(matches!(auth.authorize(&headers("Bearer test"), Scope::Read), Err(IngestError::Forbidden(_))));
        assert!(matches!(auth.authorize(&headers("Bearer tesT"), Scope::Write), Err(IngestError::Unauthenticated(_))));
        assert!(matches!(auth.authorize(&http::HeaderMap::new(), Scope::Write), Err(IngestError::Unauthenticated(_))));
        assert!(matches!(auth.authorize(&headers("Digest x"), Scope::Write), Err(IngestError::Unauthenticated(_))));
    }

    /// Any auth file, and any Authorization header, is read or refused, never a panic.
    #[test]
    fn fuzz_auth_file() {
        let seeds = vec![
            format!("[[token]]\nsha256 = \"{TEST_SHA256}\"\ntenant = \"team-a\"\nscopes = [\"write\", \"read\"]\n")
                .into_bytes(),
            b"Basic Z3JhZmFuYTp0ZXN0".to_vec(),
        ];
        let tokens: &[&[u8]] = &[b"[[token]]", b"\n", b"\"", b"=", b"scopes", b"Bearer ", b"Basic ", b":", b"\xc3\xa9"];
        hopscope_fuzz::run("auth-file", seeds, tokens, &|input: &[u8]| {
            let text = String::from_utf8_lossy(input);
            let parsed = config(&text);
            let mut headers = http::HeaderMap::new();
            if let Ok(value) = http::HeaderValue::from_bytes(input) {
                headers.insert(http::header::AUTHORIZATION, value);
            }
            let presented = presented_token(&headers).is_ok();
            if let Ok(auth) = &parsed {
                let _ = auth.authorize(&headers, Scope::Read);
            }
            parsed.is_ok() || presented
        });
    }

    #[test]
    fn a_bad_file_is_refused_with_the_line_at_fault() {
        let cases = [
            ("[[token]]\nsha256 = \"abc\"\ntenant = \"a\"\nscopes = [\"read\"]\n", "line 2: sha256 must be 64"),
            (
                &format!("[[token]]\nsha256 = \"{TEST_SHA256}\"\ntenant = \"../a\"\nscopes = [\"read\"]\n"),
                "line 3: tenant:",
            ),
            (
                &format!("[[token]]\nsha256 = \"{TEST_SHA256}\"\ntenant = \"a\"\nscopes = [\"root\"]\n"),
                "line 4: unknown scope \"root\"",
            ),
            (&format!("[[token]]\nsha256 = \"{TEST_SHA256}\"\ntenant = \"a\"\nscopes = []\n"), "line 4: a token needs"),
            (
                &format!(
                    "[[token]]\nsha256 = \"{TEST_SHA256}\"\ntenant = \"a\"\nscopes = [\"read\"]\n\n[[token]]\nsha256 = \
                     \"{TEST_SHA256}\"\ntenant = \"b\"\nscopes = [\"read\"]\n"
                ),
                "line 7: this sha256 is listed twice",
            ),
            ("[[token]]\nsha256 = \"x\"\ntenant = \"a\"\nscope = [\"read\"]\n", "line 4"),
            ("", "no [[token]] listed"),
        ];
        for (text, expected) in cases {
            let error = config(text).unwrap_err();
            assert!(error.contains(expected), "{text:?}: {error:?} lacks {expected:?}");
        }
    }
}
