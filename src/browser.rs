//! What the API address tells browsers: every response carries a Content-Security-Policy (scripts
//! only from hopscope itself, no inline script, no framing), `X-Content-Type-Options: nosniff` and
//! a same-origin referrer policy; and cross-origin requests (CORS) are refused unless their origin
//! is listed in `--cors-allowed-origins` (Grafana in a browser, say).

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// The policy of every page: the one script and the stylesheet come from hopscope; inline `style`
/// attributes (bar widths, service colours) are allowed, inline scripts are not; nothing may frame
/// a page.
pub(crate) const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

/// Request headers a cross-origin caller may send.
const ALLOWED_HEADERS: &str = "authorization, content-type, accept, x-scope-orgid";

/// The origins allowed to call the API from a browser; none unless configured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CorsOrigins(Vec<String>);

impl CorsOrigins {
    fn allows(&self, origin: &str) -> bool {
        self.0.iter().any(|o| o == origin)
    }
}

/// Parses `--cors-allowed-origins`: origins separated by commas, each `scheme://host[:port]` as a
/// browser sends it in `Origin` (no path, no trailing slash).
pub(crate) fn parse_origins(text: &str) -> Result<CorsOrigins, String> {
    let mut origins = Vec::new();
    for origin in text.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        let Some((scheme, host)) = origin.split_once("://") else {
            return Err(format!("{origin:?} is not an origin: write it as https://host or http://host:port"));
        };
        if !matches!(scheme, "http" | "https") {
            return Err(format!("{origin:?}: the scheme must be http or https"));
        }
        if host.is_empty() || host.contains('/') || host.contains('*') {
            return Err(format!(
                "{origin:?} is not an origin: give scheme://host[:port], with no path, trailing slash or wildcard"
            ));
        }
        origins.push(origin.to_owned());
    }
    Ok(CorsOrigins(origins))
}

/// `router` with the headers above on every response, and CORS as `origins` allow it.
pub(crate) fn protect(router: Router, origins: CorsOrigins) -> Router {
    router.layer(axum::middleware::from_fn_with_state(Arc::new(origins), headers))
}

async fn headers(State(origins): State<Arc<CorsOrigins>>, request: Request, next: Next) -> Response {
    let origin = request.headers().get(header::ORIGIN).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let preflight =
        request.method() == Method::OPTIONS && request.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let allowed = origin.as_deref().is_some_and(|o| origins.allows(o));
    let mut response =
        if preflight { preflight_answer(origin.as_deref(), allowed, &origins) } else { next.run(request).await };
    let headers = response.headers_mut();
    headers.insert("content-security-policy", HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    if let (Some(origin), true) = (origin, allowed) {
        allow(headers, &origin);
    }
    response
}

fn allow(headers: &mut HeaderMap, origin: &str) {
    if let Ok(origin) = HeaderValue::from_str(origin) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static("retry-after"));
        headers.append(header::VARY, HeaderValue::from_static("origin"));
    }
}

/// The answer to a CORS preflight: 204 with what may be sent when the origin is allowed; 403 saying
/// why not otherwise (a browser then blocks the request, and its console shows the message).
fn preflight_answer(origin: Option<&str>, allowed: bool, origins: &CorsOrigins) -> Response {
    if allowed {
        let mut response = StatusCode::NO_CONTENT.into_response();
        let headers = response.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST"));
        headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static(ALLOWED_HEADERS));
        headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
        return response;
    }
    let origin = origin.unwrap_or("(none)");
    let message = if origins.0.is_empty() {
        format!(
            "cross-origin requests are refused: origin {origin} is not allowed; list it in --cors-allowed-origins \
             (HOPSCOPE_CORS_ALLOWED_ORIGINS)"
        )
    } else {
        format!("origin {origin} is not in --cors-allowed-origins ({})", origins.0.join(", "))
    };
    (StatusCode::FORBIDDEN, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], Body::from(message)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_checked_at_start() {
        let origins = parse_origins("https://grafana.example.com, http://localhost:3000").unwrap();
        assert!(origins.allows("https://grafana.example.com") && origins.allows("http://localhost:3000"));
        assert!(!origins.allows("https://grafana.example.com.evil.net") && !origins.allows("http://localhost:3001"));
        assert_eq!(parse_origins("").unwrap(), CorsOrigins::default());
        for (bad, says) in [
            ("grafana.example.com", "write it as https://host"),
            ("ftp://host", "the scheme must be http or https"),
            ("https://host/", "no path, trailing slash"),
            ("https://*.example.com", "wildcard"),
        ] {
            let error = parse_origins(bad).unwrap_err();
            assert!(error.contains(says), "{bad}: {error}");
        }
    }
}
