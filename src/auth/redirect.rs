//! Open-redirect protection: decides whether a user-supplied redirect target (the `rd`
//! parameter of `/oauth2/start`, the post-logout target) is safe to send the browser to.
//!
//! Two forms are accepted, everything else is refused (callers then fall back to `/`):
//!
//! - an absolute path on this site: `/` followed by anything but a second `/` or `\`
//!   (see [`is_safe_relative`]);
//! - an absolute `http`/`https` URL without userinfo whose host is the current request's host
//!   or is covered by the allowed domains (see [`RedirectPolicy`]).
//!
//! On top of that, any target is refused if it holds a byte outside printable ASCII
//! (controls, whitespace, non-ASCII), a backslash, a broken `%` escape, or an escaped control
//! character. Browsers strip or reinterpret such bytes in ways that can turn a path into
//! another host, so there is no reason to let them through.

use std::str::FromStr;

use http::uri::Authority;

/// Which hosts absolute redirect targets may point at.
#[derive(Debug, Clone, Default)]
pub struct RedirectPolicy {
    /// Hosts allowed exactly (`app.example.com`).
    hosts: Vec<String>,
    /// Domains allowed with all their subdomains (`.example.com`, stored as `example.com`).
    domains: Vec<String>,
}

impl RedirectPolicy {
    /// Builds a policy from host names. `".example.com"` allows `example.com` and any name
    /// under it; `"app.example.com"` allows exactly that host. Entries are compared
    /// case-insensitively; empty entries are ignored.
    pub fn new(allowed_domains: Vec<String>) -> Self {
        let mut policy = Self::default();
        for entry in allowed_domains {
            let entry = entry.trim().to_ascii_lowercase();
            match entry.strip_prefix('.') {
                Some("") => {}
                Some(domain) => policy.domains.push(domain.to_owned()),
                None if entry.is_empty() => {}
                None => policy.hosts.push(entry),
            }
        }
        policy
    }

    /// Returns `target` if it is safe to redirect to, `None` otherwise. `request_host` is the
    /// `Host` of the current request (a port is allowed); an absolute URL to that same host
    /// and port is accepted even when it is not in the allowed domains.
    pub fn check(&self, target: &str, request_host: Option<&str>) -> Option<String> {
        self.check_from(target, request_host, false)
    }

    /// [`RedirectPolicy::check`] for a request that came over https (`https`: Gatehouse's
    /// TLS listener or a trusted `X-Forwarded-Proto: https`): then an `http://` target is
    /// refused too, so a redirect never downgrades the user to cleartext.
    pub fn check_from(
        &self,
        target: &str,
        request_host: Option<&str>,
        https: bool,
    ) -> Option<String> {
        if https && !target.starts_with('/') && !is_https_url(target) {
            return None;
        }
        if target.starts_with('/') {
            return is_safe_relative(target).then(|| target.to_owned());
        }
        let (host, port) = absolute_url_host(target)?;
        let same_host =
            request_host
                .and_then(parse_host_port)
                .is_some_and(|(req_host, req_port)| {
                    req_host == host && same_port(port, req_port, default_port(target))
                });
        (same_host || self.allows(&host)).then(|| target.to_owned())
    }

    /// Whether `host` (already lower-cased) is covered by the allowed hosts or domains.
    fn allows(&self, host: &str) -> bool {
        self.hosts.iter().any(|allowed| allowed == host)
            || self.domains.iter().any(|domain| {
                host == domain
                    || host
                        .strip_suffix(domain.as_str())
                        .is_some_and(|prefix| prefix.ends_with('.'))
            })
    }
}

/// Whether `target` is a safe absolute path on this site: it starts with exactly one `/`,
/// the next character is neither `/` nor `\` (raw or `%`-escaped), and it passes the
/// character checks described in the module documentation.
pub fn is_safe_relative(target: &str) -> bool {
    let Some(rest) = target.strip_prefix('/') else {
        return false;
    };
    if rest.starts_with('/') || !clean_characters(target) {
        return false;
    }
    // `/%2f...`, `/%5c...`, `/%20...`: an escaped separator or blank right after the leading
    // slash becomes `//host` for anything that decodes the path once.
    let first_escaped = rest
        .strip_prefix('%')
        .and_then(|hex| decode_hex(hex.as_bytes()));
    !matches!(first_escaped, Some(b'/' | b'\\' | b' '))
}

/// Checks shared by both forms: only printable ASCII, no backslash, every `%` starts a
/// well-formed escape, and no escape stands for a control character.
fn clean_characters(target: &str) -> bool {
    let bytes = target.as_bytes();
    if bytes.is_empty() || !bytes.iter().all(|&b| b.is_ascii_graphic() && b != b'\\') {
        return false;
    }
    bytes.iter().enumerate().all(|(i, &b)| {
        b != b'%'
            || bytes
                .get(i + 1..i + 3)
                .and_then(decode_hex)
                .is_some_and(|decoded| !decoded.is_ascii_control())
    })
}

/// The byte written by two hex digits at the start of `hex`, if they are hex digits.
fn decode_hex(hex: &[u8]) -> Option<u8> {
    let digit = |b: u8| (b as char).to_digit(16);
    let high = digit(*hex.first()?)?;
    let low = digit(*hex.get(1)?)?;
    u8::try_from(high * 16 + low).ok()
}

/// For an `http`/`https` URL of the form `scheme://host[:port][/...]` without userinfo, the
/// lower-cased host and the explicit port, if any.
fn absolute_url_host(target: &str) -> Option<(String, Option<u16>)> {
    if !clean_characters(target) {
        return None;
    }
    let (scheme, rest) = target.split_once(':')?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return None;
    }
    let after_slashes = rest.strip_prefix("//")?;
    let end = after_slashes
        .find(['/', '?', '#'])
        .unwrap_or(after_slashes.len());
    parse_host_port(&after_slashes[..end])
}

/// Splits an authority (`host[:port]`) into its lower-cased host and port. Refuses userinfo,
/// an empty host, characters that do not belong in a host name, and a port that is not a
/// number.
fn parse_host_port(authority: &str) -> Option<(String, Option<u16>)> {
    if authority.contains('@') {
        return None;
    }
    let parsed = Authority::from_str(authority).ok()?;
    let host = parsed.host();
    if !valid_host(host) {
        return None;
    }
    // Without userinfo the authority is `host` followed by an optional `:port`.
    let port = match authority.get(host.len()..)? {
        "" => None,
        tail => Some(tail.strip_prefix(':')?.parse::<u16>().ok()?),
    };
    Some((host.to_ascii_lowercase(), port))
}

/// A DNS name or IPv4 address (letters, digits, `-`, `_`, `.`) or a bracketed IPv6 address.
fn valid_host(host: &str) -> bool {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return !inner.is_empty()
            && inner
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
    }
    !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Whether `target` starts with the `https:` scheme (any case).
fn is_https_url(target: &str) -> bool {
    target
        .get(..6)
        .is_some_and(|s| s.eq_ignore_ascii_case("https:"))
}

/// The port a browser uses for `target` when none is written.
fn default_port(target: &str) -> u16 {
    if target
        .get(..6)
        .is_some_and(|s| s.eq_ignore_ascii_case("https:"))
    {
        443
    } else {
        80
    }
}

/// Whether two optional ports name the same port, a missing one meaning the default.
fn same_port(a: Option<u16>, b: Option<u16>, default: u16) -> bool {
    a.unwrap_or(default) == b.unwrap_or(default)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(domains: &[&str]) -> RedirectPolicy {
        RedirectPolicy::new(domains.iter().map(|d| d.to_string()).collect())
    }

    #[test]
    fn every_known_open_redirect_payload_is_refused() {
        let policy = policy(&[".example.com", "good.com"]);
        let payloads = [
            "",
            "//evil.com",
            "///evil.com",
            "/\\evil.com",
            "\\\\evil.com",
            "/%09/evil.com",
            "/%2f%2fevil.com",
            "/%2F%2Fevil.com",
            "/%5cevil.com",
            "/%5Cevil.com",
            "/%20/evil.com",
            "/\t/evil.com",
            "/\r\n/evil.com",
            "/\0/evil.com",
            "/ /evil.com",
            " /x",
            "/x y",
            "/x\\y",
            "/x%00",
            "/x%0d%0aSet-Cookie:a=b",
            "/x%7f",
            "/x%",
            "/x%2",
            "/x%zz",
            "/\u{3000}/evil.com",
            "javascript:alert(1)",
            "JaVaScRiPt:alert(1)",
            "data:text/html,<script>alert(1)</script>",
            "http:evil.com",
            "https:/evil.com",
            "http://good.com@evil.com",
            "http://user:pass@good.com/",
            "http://evil.com#@good.com",
            "http://evil.com\\@good.com",
            "http://good.com.evil.com",
            "http://example.com.evil.net",
            "http://evilexample.com",
            "https://evil.com/?x=good.com",
            "https://evil.com",
            "https:///evil.com",
            "https://",
            "https://:443/",
            "https://good.com:abc/",
            "https://good.com:99999/",
            "https://good%2ecom/",
            "ftp://good.com/",
            "evil.com",
            "good.com",
            "./x",
            "x/y",
            "?x=/",
            "#/x",
        ];
        for payload in payloads {
            assert_eq!(
                policy.check(payload, Some("app.example.com")),
                None,
                "{payload:?}"
            );
        }
    }

    #[test]
    fn safe_targets_are_returned_unchanged() {
        let cases: &[(&str, &[&str], Option<&str>)] = &[
            ("/", &[], None),
            ("/app?x=1&y=%2F", &[], None),
            ("/a/b#frag", &[], None),
            ("/a//b", &[], None),
            ("https://app.example.com/x", &[".example.com"], None),
            ("https://x.y.example.com/", &[".example.com"], None),
            ("https://example.com/", &[".example.com"], None),
            ("http://APP.Example.COM:8443/x", &["app.example.com"], None),
            ("HTTPS://app.example.com", &["APP.EXAMPLE.COM"], None),
            ("http://127.0.0.1:4180/x", &[], Some("127.0.0.1:4180")),
            ("https://App.Local/x#top", &[], Some("app.local")),
            ("https://app.local:443/", &[], Some("app.local")),
            ("http://[::1]:8080/", &[], Some("[::1]:8080")),
        ];
        for &(target, domains, request_host) in cases {
            assert_eq!(
                policy(domains).check(target, request_host),
                Some(target.to_owned()),
                "{target:?} with {domains:?} and host {request_host:?}"
            );
        }
    }

    #[test]
    fn the_request_host_on_another_port_or_another_host_is_refused() {
        let policy = policy(&["good.com"]);
        let host = Some("127.0.0.1:4180");
        assert_eq!(policy.check("http://127.0.0.1:9999/x", host), None);
        assert_eq!(policy.check("http://127.0.0.1/x", host), None);
        assert_eq!(policy.check("http://127.0.0.2:4180/x", host), None);
        assert_eq!(policy.check("http://127.0.0.1:4180/x", None), None);
        assert_eq!(policy.check("http://x:4180/", Some("user@x:4180")), None);
    }

    /// Over https, no absolute target that is not https passes, however it is spelled;
    /// paths and https targets are judged as before.
    #[test]
    fn a_request_over_https_is_never_redirected_to_http() {
        let policy = policy(&[".example.com"]);
        let host = Some("app.example.com");
        for target in [
            "http://app.example.com/x",
            "HTTP://app.example.com/x",
            "Http://APP.example.com:443/",
            "http://a.example.com",
            "http:app.example.com",
        ] {
            assert_eq!(policy.check_from(target, host, true), None, "{target}");
        }
        assert!(policy
            .check_from("http://app.example.com/x", host, false)
            .is_some());
        for target in [
            "https://app.example.com/x",
            "HTTPS://a.example.com/",
            "/x?y=http://z",
        ] {
            assert_eq!(
                policy.check_from(target, host, true),
                Some(target.to_string()),
                "{target}"
            );
        }
    }

    proptest::proptest! {
        /// For any target, over https the answer is the plain answer, minus every
        /// absolute target whose scheme is not https.
        #[test]
        fn over_https_only_paths_and_https_targets_survive(
            scheme in "(?i:https?|ftp|javascript)",
            sep in "(://|:/|:)",
            host in "(app|a\\.b|evil)\\.example\\.com(:[0-9]{1,5})?",
            path in "(/[a-z%0-9]{0,5}){0,3}",
        ) {
            let policy = policy(&[".example.com"]);
            let target = format!("{scheme}{sep}{host}{path}");
            let plain = policy.check(&target, Some("app.example.com"));
            let secure = policy.check_from(&target, Some("app.example.com"), true);
            let https = scheme.eq_ignore_ascii_case("https");
            proptest::prop_assert_eq!(secure, plain.filter(|_| https));
        }
    }

    #[test]
    fn an_exact_host_entry_does_not_allow_its_subdomains() {
        let policy = policy(&["example.com"]);
        assert!(policy.check("https://example.com/", None).is_some());
        assert_eq!(policy.check("https://a.example.com/", None), None);
    }

    #[test]
    fn a_domain_entry_matches_only_on_a_label_boundary() {
        let policy = policy(&[".example.com"]);
        assert_eq!(policy.check("https://evilexample.com/", None), None);
        assert_eq!(policy.check("https://example.com.evil.net/", None), None);
        assert_eq!(policy.check("https://example.co/", None), None);
    }

    #[test]
    fn empty_or_bare_dot_entries_allow_nothing() {
        let policy = policy(&["", ".", "  "]);
        assert_eq!(policy.check("https://evil.com./", None), None);
        assert_eq!(policy.check("https://evil.com/", None), None);
    }

    #[test]
    fn is_safe_relative_accepts_only_single_slash_paths() {
        assert!(is_safe_relative("/"));
        assert!(is_safe_relative("/x/%2F/y"));
        assert!(!is_safe_relative("//x"));
        assert!(!is_safe_relative("/%2fx"));
        assert!(!is_safe_relative("https://example.com/"));
        assert!(!is_safe_relative(""));
    }
}
