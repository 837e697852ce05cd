//! Which request a forward-auth call (`/oauth2/auth`) asks about. The front proxy (nginx
//! `auth_request`, Traefik `forwardAuth`, Caddy `forward_auth`) sends a subrequest that copies
//! the client's headers and adds the URI and method of the request it is serving. Only that
//! proxy's own headers count, so:
//!
//! - the subrequest must come from a peer in `[headers] trusted_proxies` (else 403): a client
//!   that reaches Gatehouse directly cannot describe a request of its choosing;
//! - the URI and the method are read from the one header each that `[forward_auth]` names
//!   (the front proxy overwrites them, whatever the client sent), and each must be there
//!   exactly once (else 400);
//! - when the other common spelling (`X-Forwarded-Uri` / `X-Original-URI`,
//!   `X-Forwarded-Method` / `X-Original-Method`) comes too, with a different value, it was the
//!   client's: 400, never a guess at which one is true;
//! - the URI is an origin-form target; its path is normalized like any request path, and
//!   each segment is matched without its `;parameters` (what Tomcat and Jetty serve for
//!   `/admin;x/users` is `/admin/users`); a dot segment with parameters (`..;x`) is refused.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, Method};
use ipnet::IpNet;

use crate::config::model::ForwardAuth;
use crate::uri::path::{normalize, NormalPath};

/// The request the front proxy is serving.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forwarded {
    pub method: Method,
    /// The normalized path (both forms: as forwarded, and without segment parameters): what
    /// the access rules and the MFA policy see.
    pub path: NormalPath,
    /// The query as sent (never matched), for the way back after a sign-in.
    pub query: Option<String>,
}

impl Forwarded {
    /// The normalized path and the query: where a browser goes back to after signing in.
    pub fn return_to(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{q}", self.path.as_str()),
            None => self.path.as_str().to_string(),
        }
    }
}

pub use crate::error::ForwardAuthRefusal as Refusal;

/// The one value of `name`, as text.
fn single<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Result<&'a str, Refusal> {
    let mut values = headers.get_all(name).iter();
    let value = values
        .next()
        .ok_or_else(|| Refusal::Missing(name.clone()))?;
    if values.next().is_some() {
        return Err(Refusal::Repeated(name.clone()));
    }
    value.to_str().map_err(|_| Refusal::Malformed(name.clone()))
}

/// Every value of each `others` header must equal `value`.
fn agree(
    headers: &HeaderMap,
    configured: &HeaderName,
    value: &str,
    others: impl Iterator<Item = &'static str>,
) -> Result<(), Refusal> {
    for other in others {
        if headers
            .get_all(other)
            .iter()
            .any(|v| v.as_bytes() != value.as_bytes())
        {
            return Err(Refusal::Conflict {
                configured: configured.clone(),
                other,
            });
        }
    }
    Ok(())
}

/// Reads the request a forward-auth call asks about, from a caller at `peer`.
pub fn read(
    config: &ForwardAuth,
    trusted: &[IpNet],
    peer: Option<IpAddr>,
    headers: &HeaderMap,
) -> Result<Forwarded, Refusal> {
    let peer = peer.map(|ip| ip.to_canonical());
    if !peer.is_some_and(|ip| trusted.iter().any(|net| net.contains(&ip))) {
        return Err(Refusal::UntrustedPeer(peer.map_or_else(
            || "on a Unix socket".to_string(),
            |ip| ip.to_string(),
        )));
    }
    let uri = single(headers, &config.uri_header)?;
    agree(headers, &config.uri_header, uri, config.other_uri_headers())?;
    let method = single(headers, &config.method_header)?;
    agree(
        headers,
        &config.method_header,
        method,
        config.other_method_headers(),
    )?;
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| Refusal::Malformed(config.method_header.clone()))?;
    // Origin form only: `/path?query`. A fragment never belongs in a request target.
    if !uri.starts_with('/') || uri.contains('#') {
        return Err(Refusal::Malformed(config.uri_header.clone()));
    }
    let (path, query) = match uri.split_once('?') {
        Some((p, q)) => (p, Some(q.to_string())),
        None => (uri, None),
    };
    let malformed = || Refusal::Malformed(config.uri_header.clone());
    // Dot segments with parameters (`..;x`) are refused; rules see the parameter-free form.
    let path = normalize(path).map_err(|_| malformed())?;
    Ok(Forwarded {
        method,
        path,
        query,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn loopback() -> Vec<IpNet> {
        vec![
            "127.0.0.1/32".parse().unwrap(),
            "10.0.0.0/8".parse().unwrap(),
        ]
    }

    fn nginx() -> ForwardAuth {
        ForwardAuth {
            uri_header: HeaderName::from_static("x-original-uri"),
            method_header: HeaderName::from_static("x-original-method"),
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn from(ip: &str, config: &ForwardAuth, h: &HeaderMap) -> Result<Forwarded, Refusal> {
        read(config, &loopback(), Some(ip.parse().unwrap()), h)
    }

    #[test]
    fn the_configured_headers_from_a_trusted_proxy_name_the_request() {
        let h = headers(&[
            ("x-original-uri", "/admin/x?a=1"),
            ("x-original-method", "POST"),
        ]);
        let got = from("127.0.0.1", &nginx(), &h).unwrap();
        assert_eq!(got.method, Method::POST);
        assert_eq!(got.path.match_form(), "/admin/x");
        assert_eq!(got.return_to(), "/admin/x?a=1");
        // An IPv4-mapped IPv6 peer is the same peer.
        assert!(from("::ffff:10.1.2.3", &nginx(), &h).is_ok());
    }

    #[test]
    fn a_caller_outside_trusted_proxies_is_refused_whatever_it_sends() {
        let h = headers(&[("x-original-uri", "/"), ("x-original-method", "GET")]);
        for ip in ["192.0.2.1", "127.0.0.2", "::1", "11.0.0.1"] {
            assert!(
                matches!(from(ip, &nginx(), &h), Err(Refusal::UntrustedPeer(_))),
                "{ip}"
            );
        }
        assert!(matches!(
            read(&nginx(), &loopback(), None, &h),
            Err(Refusal::UntrustedPeer(_))
        ));
        assert!(matches!(
            read(&nginx(), &[], Some("127.0.0.1".parse().unwrap()), &h),
            Err(Refusal::UntrustedPeer(_))
        ));
    }

    #[test]
    fn the_other_spelling_with_another_value_is_a_conflict_not_a_choice() {
        let real = [
            ("x-original-uri", "/admin/x"),
            ("x-original-method", "DELETE"),
        ];
        for (name, spoof) in [
            ("x-forwarded-uri", "/"),
            ("X-Forwarded-Uri", "/admin/x/"),
            ("x-forwarded-method", "GET"),
            ("X-FORWARDED-METHOD", "delete"),
        ] {
            let mut pairs = real.to_vec();
            pairs.push((name, spoof));
            assert!(
                matches!(
                    from("127.0.0.1", &nginx(), &headers(&pairs)),
                    Err(Refusal::Conflict { .. })
                ),
                "{name}: {spoof}"
            );
        }
        // The same value twice over is not a conflict.
        let mut pairs = real.to_vec();
        pairs.push(("x-forwarded-uri", "/admin/x"));
        assert!(from("127.0.0.1", &nginx(), &headers(&pairs)).is_ok());
    }

    #[test]
    fn a_missing_repeated_or_malformed_header_is_refused() {
        let d = ForwardAuth::default();
        for pairs in [
            vec![("x-forwarded-method", "GET")],
            vec![("x-forwarded-uri", "/a")],
            vec![
                ("x-forwarded-uri", "/"),
                ("x-forwarded-uri", "/admin"),
                ("x-forwarded-method", "GET"),
            ],
            vec![
                ("x-forwarded-uri", "/admin"),
                ("x-forwarded-method", "GET"),
                ("x-forwarded-method", "POST"),
            ],
            vec![("x-forwarded-uri", "admin"), ("x-forwarded-method", "GET")],
            vec![
                ("x-forwarded-uri", "http://h/admin"),
                ("x-forwarded-method", "GET"),
            ],
            vec![("x-forwarded-uri", "/a#b"), ("x-forwarded-method", "GET")],
            vec![
                ("x-forwarded-uri", "/../admin"),
                ("x-forwarded-method", "GET"),
            ],
            vec![
                ("x-forwarded-uri", "/%2fadmin"),
                ("x-forwarded-method", "GET"),
            ],
            vec![("x-forwarded-uri", "/a"), ("x-forwarded-method", "G(E)T")],
        ] {
            assert!(
                from("127.0.0.1", &d, &headers(&pairs)).is_err(),
                "{pairs:?}"
            );
        }
    }

    /// Path parameters do not hide a segment from the rules; a dot segment with parameters
    /// is refused.
    #[test]
    fn segment_parameters_are_not_part_of_the_matched_path() {
        let d = ForwardAuth::default();
        for (uri, want) in [
            ("/admin;x", Some("/admin")),
            ("/admin;x/users", Some("/admin/users")),
            ("/admin;jsessionid=1;a=b/x;y", Some("/admin/x")),
            ("/public/..;/admin", None),
            ("/public/.;x/admin", None),
            ("/public/%2e%2e;x/admin", None),
            ("/public/%2E;/admin", None),
        ] {
            let h = headers(&[("x-forwarded-uri", uri), ("x-forwarded-method", "GET")]);
            let got = from("127.0.0.1", &d, &h)
                .ok()
                .map(|f| f.path.match_form().to_string());
            assert_eq!(got.as_deref(), want, "{uri}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// Whatever the client adds (either spelling of either header, any value, any
        /// number of times), the answer is the front proxy's request or a refusal, never the
        /// request the client describes.
        #[test]
        fn client_headers_never_change_the_request_that_is_checked(
            extra in proptest::collection::vec(
                (
                    prop::sample::select(vec![
                        "x-forwarded-uri", "x-original-uri",
                        "x-forwarded-method", "x-original-method",
                    ]),
                    prop::sample::select(vec![
                        "/", "/admin", "/admin/x", "/public", "//admin", "/%61dmin",
                        "/admin;x", "GET", "POST", "get", "/x?y=/admin",
                    ]),
                ),
                0..4,
            ),
            nginx_style in any::<bool>(),
        ) {
            let config = if nginx_style { nginx() } else { ForwardAuth::default() };
            let mut h = HeaderMap::new();
            for (name, value) in &extra {
                h.append(HeaderName::from_static(name), value.parse().unwrap());
            }
            // The front proxy overwrites its own headers.
            h.insert(config.uri_header.clone(), "/admin/x".parse().unwrap());
            h.insert(config.method_header.clone(), "POST".parse().unwrap());
            match from("127.0.0.1", &config, &h) {
                Ok(got) => {
                    prop_assert_eq!(got.path.match_form(), "/admin/x");
                    prop_assert_eq!(got.method, Method::POST);
                }
                Err(e) => {
                    let conflict = matches!(e, Refusal::Conflict { .. });
                    prop_assert!(conflict, "{}", e);
                }
            }
        }
    }
}
