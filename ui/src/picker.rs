//! The tenant picker: on a server that keeps tenants apart, the page a browser gets when its URL
//! names no tenant (or one the server does not hold), listing the tenants to choose from. The
//! choice is kept in the URL (`tenant=`), so a page can still be shared by its link.

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use maud::{DOCTYPE, html};

use crate::page::head;
use crate::paths;
use crate::window::{TENANT_PARAM, href};

/// The picker page, answered with `status`: `tenants` to choose from (sorted as given), `current`
/// marked among them, and `problem`, when there is one, said first (an unknown or invalid tenant).
/// `typed`: whether a tenant may also be typed in (not when a token decides it).
pub fn tenant_picker(
    status: StatusCode,
    tenants: &[String],
    current: Option<&str>,
    problem: Option<&str>,
    typed: bool,
) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            (head("Tenants", false))
            body {
                header.top { span.brand { "hopscope" } }
                main {
                    h1 { "Choose a tenant" }
                    @if let Some(problem) = problem { p.error-message { (problem) } }
                    p.summary { "This server keeps each tenant's spans apart; the pages show one tenant's at a time, named in their address (" code { "tenant=" } ")." }
                    @if tenants.is_empty() {
                        p.empty { "No tenant has sent spans yet. Send some with the header " code { "X-Scope-OrgID: <tenant>" } " (gRPC metadata " code { "x-scope-orgid" } "), then come back." }
                    } @else {
                        ul.tenants {
                            @for tenant in tenants {
                                li {
                                    a href=(href(paths::GRAPH, [(TENANT_PARAM, tenant.as_str())])) aria-current=[(current == Some(tenant.as_str())).then_some("page")] { (tenant) }
                                }
                            }
                        }
                    }
                    @if typed {
                        form.filter method="get" action=(paths::GRAPH) {
                            label { "Tenant " input type="text" name=(TENANT_PARAM) value=[current] required pattern="[A-Za-z0-9._\\-]{1,150}" placeholder="team-a"; }
                            button type="submit" { "Open" }
                        }
                    }
                }
            }
        }
    };
    (status, Html(markup.into_string())).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(response: Response) -> String {
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn links_name_each_tenant_and_problems_are_said_as_text() {
        let tenants = vec!["team-a".to_owned(), "team.b".to_owned()];
        let response = tenant_picker(StatusCode::NOT_FOUND, &tenants, Some("team.b"), Some("no tenant <x>"), true);
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        let page = body(response).await;
        assert!(page.contains(r#"href="/ui/graph?tenant=team-a""#), "{page}");
        assert!(page.contains(r#"href="/ui/graph?tenant=team.b" aria-current="page""#), "{page}");
        assert!(page.contains("no tenant &lt;x&gt;"), "{page}");
    }
}
