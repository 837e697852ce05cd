//! Early answers: responses Gatehouse writes itself (errors, redirects, `/ping`). Error pages
//! come as a small HTML page or as JSON, by what the client accepts.

use bytes::Bytes;
use http::header::{
    ACCEPT, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE,
};
use http::{HeaderMap, Method, StatusCode};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;

use crate::error::RequestError;
use maud::html;

use super::templates::{self, page, Theme};

const X_REQUESTED_WITH: &str = "x-requested-with";

/// A request a browser made for a page (so it can follow a login redirect), as opposed to an
/// API call that should get 401: a GET or HEAD that accepts `text/html` and is not XHR.
pub fn is_browser(method: &Method, headers: &HeaderMap) -> bool {
    (method == Method::GET || method == Method::HEAD)
        && !headers.contains_key(X_REQUESTED_WITH)
        && accepts_html(headers)
}

fn accepts_html(headers: &HeaderMap) -> bool {
    headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/html"))
}

/// Writes a whole response. HEAD requests get the headers only.
pub async fn send(
    session: &mut Session,
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
    extra: &[(http::HeaderName, String)],
) -> Result<()> {
    let mut header = ResponseHeader::build(status, Some(4 + extra.len()))?;
    header.insert_header(CONTENT_TYPE, content_type)?;
    header.insert_header(CONTENT_LENGTH, body.len())?;
    header.insert_header(CACHE_CONTROL, "no-store")?;
    for (name, value) in extra {
        header.append_header(name.clone(), value.as_str())?;
    }
    let head_only = session.req_header().method == Method::HEAD;
    session
        .write_response_header(Box::new(header), head_only)
        .await?;
    if !head_only {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

/// The body of an error answer, as HTML for browsers (branded by `theme`) and JSON for
/// everyone else.
pub fn error_body(
    theme: &Theme,
    status: StatusCode,
    message: &str,
    request_id: &str,
    html: bool,
) -> (&'static str, Bytes) {
    let reason = status.canonical_reason().unwrap_or("Error");
    if html {
        let body = html! { (templates::para(message)) (templates::request_id(request_id)) };
        let title = format!("{} {reason}", status.as_u16());
        (
            "text/html; charset=utf-8",
            Bytes::from(page(theme, &title, body)),
        )
    } else {
        let json = serde_json::json!({
            "status": status.as_u16(),
            "error": reason,
            "message": message,
            "request_id": request_id,
        });
        ("application/json", Bytes::from(json.to_string()))
    }
}

/// Answers with the status and page of `error`.
pub async fn error(session: &mut Session, error: &RequestError, request_id: &str) -> Result<()> {
    let status = error.status();
    let html = accepts_html(&session.req_header().headers);
    let theme = Theme::of(session);
    let (content_type, body) = error_body(&theme, status, error.public_message(), request_id, html);
    let extra = match error {
        RequestError::Unauthenticated => {
            vec![(WWW_AUTHENTICATE, "Bearer realm=\"gatehouse\"".to_string())]
        }
        _ => Vec::new(),
    };
    send(session, status, content_type, body, &extra).await
}

/// 403 for a signed-in account an access rule refuses: says which sign-ins could open the
/// route (`options`: connection id and label; `rd` the raw address to come back to), not
/// which rule failed.
pub async fn access_denied(
    session: &mut Session,
    request_id: &str,
    options: &[(String, String)],
    rd: &str,
) -> Result<()> {
    let status = StatusCode::FORBIDDEN;
    let message = "Your account cannot open this page.";
    let theme = Theme::of(session);
    if !accepts_html(&session.req_header().headers) {
        let (kind, body) = error_body(&theme, status, message, request_id, false);
        return send(session, status, kind, body, &[]).await;
    }
    let body = html! {
        (templates::para(message))
        (templates::para("Sign in with an account that has access:"))
        @for (id, label) in options {
            (templates::sign_in_button(None, &super::paths::start_link(Some(id), rd), label))
        }
        (templates::request_id(request_id))
    };
    page_answer(
        session,
        status,
        page(&theme, "403 Forbidden", body),
        Vec::new(),
    )
    .await
}

/// A page with the strict CSP, and any extra headers.
pub async fn page_answer(
    session: &mut Session,
    status: StatusCode,
    html: String,
    extra: Vec<(http::HeaderName, String)>,
) -> Result<()> {
    let mut headers = vec![(
        http::HeaderName::from_static("content-security-policy"),
        templates::CSP.to_string(),
    )];
    headers.extend(extra);
    send(
        session,
        status,
        "text/html; charset=utf-8",
        Bytes::from(html),
        &headers,
    )
    .await
}

/// A branded page titled `title` around `body`, with the strict CSP and any extra headers.
pub async fn html_page(
    session: &mut Session,
    status: StatusCode,
    title: &str,
    body: maud::Markup,
    extra: Vec<(http::HeaderName, String)>,
) -> Result<()> {
    let html = page(&Theme::of(session), title, body);
    page_answer(session, status, html, extra).await
}

/// A 302 to `location`, setting `cookies` (`Set-Cookie` values).
pub async fn redirect(session: &mut Session, location: &str, cookies: Vec<String>) -> Result<()> {
    let mut extra = vec![(LOCATION, location.to_string())];
    extra.extend(cookies.into_iter().map(|c| (http::header::SET_COOKIE, c)));
    send(
        session,
        StatusCode::FOUND,
        "text/plain; charset=utf-8",
        Bytes::from_static(b"Redirecting\n"),
        &extra,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn a_page_load_is_a_browser_and_an_xhr_or_post_is_not() {
        let page = headers(&[("accept", "text/html,application/xhtml+xml")]);
        assert!(is_browser(&Method::GET, &page));
        assert!(!is_browser(&Method::POST, &page));
        let xhr = headers(&[
            ("accept", "text/html"),
            ("x-requested-with", "XMLHttpRequest"),
        ]);
        assert!(!is_browser(&Method::GET, &xhr));
        assert!(!is_browser(
            &Method::GET,
            &headers(&[("accept", "application/json")])
        ));
        assert!(!is_browser(&Method::GET, &headers(&[])));
    }

    #[test]
    fn error_pages_escape_what_they_show() {
        let theme = Theme::default();
        let (kind, body) = error_body(&theme, StatusCode::BAD_GATEWAY, "<script>", "id\"1", true);
        assert!(kind.starts_with("text/html"));
        let body = String::from_utf8(body.to_vec()).unwrap();
        assert!(body.contains("&lt;script&gt;") && body.contains("id&quot;1"));
        let (kind, body) = error_body(&theme, StatusCode::BAD_GATEWAY, "down", "1", false);
        assert_eq!(kind, "application/json");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["status"], 502);
    }
}
