//! Query strings and form bodies: decoded with `form_urlencoded` (`+` is a space, bad
//! percent-escapes kept as written, invalid UTF-8 replaced), and reading a small form body.

use pingora::proxy::Session;

/// Request bodies Gatehouse reads itself are small forms.
const MAX_FORM: usize = 64 * 1024;

/// The body deadline when the request carries none (the `client_body_timeout` default).
const DEFAULT_BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The client body deadline of a request, for Gatehouse's own endpoints that read a body
/// (kept in the request's extensions by the proxy; pingora times HTTP/1 body reads itself,
/// not h2 ones).
#[derive(Debug, Clone, Copy)]
pub struct BodyTimeout(pub std::time::Duration);

/// Decoded `name=value` pairs of a query string or form body.
pub fn form_pairs(text: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(text)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The first value of `name`.
pub fn param<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Reads a small form body. Answers `Expect: 100-continue` first. A body that stalls longer
/// than `client_body_timeout` between reads, or ends early, is the client's failure
/// (`ReadTimedout` / `ReadError` from downstream: 408 / 400 in `fail_to_proxy`), never a 500.
pub async fn read_form(session: &mut Session) -> pingora::Result<Vec<(String, String)>> {
    let expects_continue = session.req_header().version == http::Version::HTTP_11
        && session
            .req_header()
            .headers
            .get(http::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue {
        session
            .write_continue_response()
            .await
            .map_err(|e| e.into_down())?;
    }
    let timeout = session
        .req_header()
        .extensions
        .get::<BodyTimeout>()
        .map_or(DEFAULT_BODY_TIMEOUT, |t| t.0);
    let mut body = Vec::new();
    loop {
        let chunk = match tokio::time::timeout(timeout, session.read_request_body()).await {
            Ok(Ok(Some(chunk))) => chunk,
            Ok(Ok(None)) => break,
            Ok(Err(e)) => return Err(e.into_down()),
            Err(_) => {
                return Err(pingora::Error::explain(
                    pingora::ErrorType::ReadTimedout,
                    "reading a form body",
                )
                .into_down())
            }
        };
        body.extend_from_slice(&chunk);
        if body.len() > MAX_FORM {
            break;
        }
    }
    Ok(form_pairs(&body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Percent-escapes and `+` are decoded; a name without `=` has an empty value.
    #[test]
    fn query_pairs_are_decoded() {
        let pairs = form_pairs(b"rd=%2Fa%3Fb%3D1&x=a+b&empty=&flag");
        assert_eq!(param(&pairs, "rd"), Some("/a?b=1"));
        assert_eq!(param(&pairs, "x"), Some("a b"));
        assert_eq!(param(&pairs, "empty"), Some(""));
        assert_eq!(param(&pairs, "flag"), Some(""));
        assert_eq!(param(&pairs, "none"), None);
    }

    proptest! {
        /// Whatever bytes arrive, parsing never panics, and an encoded pair always comes back
        /// as it was sent (so no value can smuggle in another parameter).
        #[test]
        fn any_body_parses_and_encoded_values_round_trip(
            raw in proptest::collection::vec(any::<u8>(), 0..200),
            value in ".*",
        ) {
            let _ = form_pairs(&raw);
            let body = form_urlencoded::Serializer::new(String::new())
                .append_pair("csrf", &value)
                .append_pair("rd", "/x")
                .finish();
            let pairs = form_pairs(body.as_bytes());
            prop_assert_eq!(param(&pairs, "csrf"), Some(value.as_str()));
            prop_assert_eq!(param(&pairs, "rd"), Some("/x"));
            prop_assert_eq!(pairs.len(), 2);
        }
    }
}
