//! The `Host` a request names, checked before anything routes on it or builds a URL from it
//! (RFC 9112 section 3.2: an HTTP/1.1 request without `Host`, or with more than one, is a
//! 400; RFC 9110 section 7.2: `Host = uri-host [ ":" port ]`).
//!
//! The accepted form is deliberately narrower than RFC 3986's reg-name: letters, digits,
//! `-`, `.`, `_`, `~`; an IPv4 address in dotted-quad form; an IPv6 literal in brackets; an
//! optional port from 0 to 65535. A name whose last label is numeric must be an IPv4
//! address (URL parsers read `a.999` as a broken address, not a name).

use std::net::{Ipv4Addr, Ipv6Addr};

use http::{HeaderMap, Uri, Version};

/// Why a request's host was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("no Host header")]
    Missing,
    #[error("more than one Host header")]
    Repeated,
    #[error("malformed Host")]
    Malformed,
}

impl HostError {
    /// The `gatehouse_client_errors_total` reason.
    pub fn reason(self) -> crate::metrics::ClientError {
        match self {
            HostError::Missing => crate::metrics::ClientError::MissingHost,
            HostError::Repeated | HostError::Malformed => crate::metrics::ClientError::BadHost,
        }
    }
}

/// The longest host Gatehouse accepts (a DNS name is at most 253 characters).
const MAX_HOST: usize = 255;

/// Checks the `Host` header (and the target's authority, for absolute-form and h2).
/// HTTP/1.0 may omit both; HTTP/1.1 and HTTP/2 name a host.
pub fn check(version: Version, uri: &Uri, headers: &HeaderMap) -> Result<(), HostError> {
    let mut hosts = headers.get_all(http::header::HOST).iter();
    let header = hosts.next();
    if hosts.next().is_some() {
        return Err(HostError::Repeated);
    }
    if let Some(value) = header {
        let text = value.to_str().map_err(|_| HostError::Malformed)?;
        if !is_valid(text) {
            return Err(HostError::Malformed);
        }
    }
    if let Some(authority) = uri.authority() {
        if !is_valid(authority.as_str()) {
            return Err(HostError::Malformed);
        }
    }
    if header.is_none() && uri.authority().is_none() && version != Version::HTTP_10 {
        return Err(HostError::Missing);
    }
    Ok(())
}

/// Whether `text` is `host [":" port]` in the accepted form (see the module documentation).
pub fn is_valid(text: &str) -> bool {
    if text.is_empty() || text.len() > MAX_HOST {
        return false;
    }
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let Some((literal, after)) = rest.split_once(']') else {
            return false;
        };
        if literal.parse::<Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => return true,
            _ => match after.strip_prefix(':') {
                Some(port) => (None, Some(port)),
                None => return false,
            },
        }
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(text), None),
        }
    };
    if let Some(port) = port {
        let digits =
            !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit());
        if !digits || port.parse::<u32>().map_or(true, |p| p > 65_535) {
            return false;
        }
    }
    match host {
        None => true,
        Some(name) => is_name(name),
    }
}

/// A reg-name of letters, digits, `-`, `.`, `_`, `~`, or a dotted-quad IPv4 address.
fn is_name(name: &str) -> bool {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
    {
        return false;
    }
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    let last = trimmed.rsplit('.').next().unwrap_or("");
    if last.is_empty() {
        return false;
    }
    let numeric = last.as_bytes()[0].is_ascii_digit();
    !numeric || trimmed.parse::<Ipv4Addr>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(http::header::HOST, v.parse().unwrap());
        }
        h
    }

    fn origin() -> Uri {
        "/".parse().unwrap()
    }

    /// The reported spellings and their relatives are refused; ordinary hosts pass.
    #[test]
    fn malformed_hosts_are_refused_and_ordinary_ones_pass() {
        for bad in [
            "a b",
            "[zz]",
            "127.0.0.1:99999",
            "",
            ":80",
            "host:",
            "host:80:80",
            "[::1",
            "[::1]x",
            "[::1]:",
            "a.999",
            "999.1.1.1",
            "1.2.3",
            "a/b",
            "a@b",
            "a?b",
            "a#b",
            "a\\b",
            "a%20b",
            "host:-1",
            "host:+80",
            "host:000080",
            "[fe80::1%eth0]",
        ] {
            assert!(!is_valid(bad), "{bad:?} passed");
        }
        for good in [
            "example.com",
            "example.com.",
            "app.example.com:8443",
            "localhost",
            "127.0.0.1",
            "127.0.0.1:4180",
            "[::1]",
            "[::1]:4180",
            "under_score.example",
            "x--y.example",
            "host:0",
            "host:65535",
        ] {
            assert!(is_valid(good), "{good:?} refused");
        }
    }

    /// RFC 9112: HTTP/1.1 needs exactly one Host; HTTP/1.0 may omit it; h2 names the host in
    /// its authority.
    #[test]
    fn http11_needs_exactly_one_host_and_http10_may_omit_it() {
        assert_eq!(
            check(Version::HTTP_11, &origin(), &HeaderMap::new()),
            Err(HostError::Missing)
        );
        assert_eq!(
            check(Version::HTTP_2, &origin(), &HeaderMap::new()),
            Err(HostError::Missing)
        );
        assert_eq!(
            check(Version::HTTP_10, &origin(), &HeaderMap::new()),
            Ok(())
        );
        assert_eq!(
            check(Version::HTTP_11, &origin(), &headers(&["a", "b"])),
            Err(HostError::Repeated)
        );
        assert_eq!(
            check(Version::HTTP_11, &origin(), &headers(&["a.example"])),
            Ok(())
        );
        let absolute: Uri = "http://app.example:8080/x".parse().unwrap();
        assert_eq!(check(Version::HTTP_2, &absolute, &HeaderMap::new()), Ok(()));
    }

    proptest! {
        /// Any host with a byte outside the accepted alphabet is refused, wherever it sits.
        #[test]
        fn any_foreign_byte_makes_a_host_malformed(
            left in "[a-z0-9.-]{0,20}",
            right in "[a-z0-9.-]{0,20}",
            bad in any::<u8>().prop_filter("outside the alphabet", |b| {
                !(b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':' | b'[' | b']'))
            }),
        ) {
            let text = format!("{left}{}{right}", bad as char);
            prop_assert!(!is_valid(&text), "{:?} passed", text);
        }

        /// Every port above 65535, or with anything but digits, is refused; every port in
        /// range passes.
        #[test]
        fn ports_are_whole_numbers_up_to_65535(port in any::<u32>(), junk in "[^0-9]{1,3}") {
            prop_assert_eq!(is_valid(&format!("host.example:{port}")), port <= 65_535);
            let with_junk = format!("host.example:{port}{junk}");
            prop_assert!(!is_valid(&with_junk), "{:?} passed", with_junk);
        }

        /// A name whose last label is numeric is an IPv4 address or nothing.
        #[test]
        fn numeric_last_labels_must_make_an_ipv4_address(a in any::<u16>(), b in any::<u16>(), c in any::<u16>(), d in any::<u16>()) {
            let text = format!("{a}.{b}.{c}.{d}");
            let octets = [a, b, c, d].iter().all(|n| *n <= 255);
            prop_assert_eq!(is_valid(&text), octets);
            let named = format!("name.{a}");
            prop_assert!(!is_valid(&named), "{:?} passed", named);
        }

        /// Every valid host also makes a valid `http://` URL for the callback address.
        #[test]
        fn every_accepted_host_builds_a_url(host in "[a-zA-Z0-9._~-]{1,30}(:[0-9]{1,5})?") {
            if is_valid(&host) {
                let url = format!("http://{host}/oauth2/callback");
                prop_assert!(url::Url::parse(&url).is_ok(), "{:?}", url);
            }
        }
    }
}
