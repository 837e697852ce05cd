//! Header hygiene: before Gatehouse looks at a request, every incoming copy of a header it
//! owns is removed, so only Gatehouse can set them; and the `Connection` header loses every
//! token that names a header Gatehouse sets, so a client cannot have pingora's hop-by-hop
//! handling remove them after Gatehouse inserted them.
//!
//! Names are compared case-insensitively and with `_` read as `-`: many app servers (CGI,
//! WSGI, PHP) turn `X-Auth-User` and `X_Auth_User` into the same variable. Removed:
//! - the identity headers (and `headers.strip` names), every `X-Gatehouse-*` header;
//! - with `headers.strip_foreign_identity` (the default), other proxies' identity headers
//!   ([`FOREIGN_NAMES`], [`FOREIGN_PREFIXES`]): apps moved from oauth2-proxy, Authelia, Apache
//!   and others trust exactly these;
//! - the `_` spellings of the forwarding headers (`X_Forwarded_For`, `X_Real_IP`, ...). The
//!   `-` spellings are [`super::forwarded`]'s: believed from trusted proxies, else replaced.

use http::header::CONNECTION;
use http::{HeaderName, HeaderValue};

use crate::headers::HeaderEdit;

const OWNED_PREFIX: &[u8] = b"x-gatehouse-";

/// Identity headers other authentication proxies set (canonical: lower-case, `-`).
pub const FOREIGN_NAMES: &[&str] = &[
    // oauth2-proxy's X-Forwarded-* identity set
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-groups",
    "x-forwarded-preferred-username",
    "x-forwarded-access-token",
    // Authelia, Apache, Grafana-style
    "remote-user",
    "remote-email",
    "remote-groups",
    "remote-name",
    "x-remote-user",
    "x-authenticated-user",
    "x-webauth-user",
    // mod_auth_openidc
    "oidc-access-token",
];

/// Prefixes of other proxies' identity headers (canonical).
pub const FOREIGN_PREFIXES: &[&str] = &[
    "x-authentik-",
    "x-pomerium-",
    "x-vouch-",
    "x-amzn-oidc-",
    "oidc-claim-",
    "x-ms-client-principal",
    "cf-access-",
];

/// The forwarding headers Gatehouse sets itself ([`super::forwarded`], the request id).
const FORWARDING: &[&str] = &[
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-real-ip",
    "forwarded",
    "x-request-id",
];

/// Every `X-Forwarded-*` name counts as set by Gatehouse when named in `Connection`.
const FORWARDED_PREFIX: &[u8] = b"x-forwarded-";

/// The owned names, built once at startup.
#[derive(Debug, Clone)]
pub struct HeaderHygiene {
    /// Lower-case, with `-`: the canonical form names are compared in.
    owned: Vec<Vec<u8>>,
    /// Strip other proxies' identity headers.
    foreign: bool,
}

/// `_` and `-` compare equal, ASCII case does not matter.
fn canonical_eq(candidate: &[u8], owned: &[u8]) -> bool {
    candidate.len() == owned.len()
        && candidate.iter().zip(owned).all(|(&c, &o)| {
            let c = c.to_ascii_lowercase();
            c == o || (c == b'_' && o == b'-')
        })
}

fn canonical_starts_with(candidate: &[u8], prefix: &[u8]) -> bool {
    candidate.len() >= prefix.len() && canonical_eq(&candidate[..prefix.len()], prefix)
}

impl HeaderHygiene {
    /// `owned`: the names Gatehouse sets or is told to strip; `foreign`: also strip the
    /// built-in list of other proxies' identity headers.
    pub fn new(owned: &[HeaderName], foreign: bool) -> Self {
        Self {
            owned: owned
                .iter()
                .map(|n| n.as_str().replace('_', "-").into_bytes())
                .collect(),
            foreign,
        }
    }

    fn is_foreign(&self, name: &[u8]) -> bool {
        self.foreign
            && (FOREIGN_NAMES
                .iter()
                .any(|f| canonical_eq(name, f.as_bytes()))
                || FOREIGN_PREFIXES
                    .iter()
                    .any(|p| canonical_starts_with(name, p.as_bytes())))
    }

    fn is_owned_bytes(&self, name: &[u8]) -> bool {
        canonical_starts_with(name, OWNED_PREFIX)
            || self.owned.iter().any(|o| canonical_eq(name, o))
            || self.is_foreign(name)
    }

    /// Whether an incoming header of this name must be removed.
    pub fn is_owned(&self, name: &HeaderName) -> bool {
        let bytes = name.as_str().as_bytes();
        self.is_owned_bytes(bytes)
            // `X_Real_IP`: a forwarding header in a spelling `forwarded` does not handle.
            || (bytes.contains(&b'_')
                && FORWARDING.iter().any(|f| canonical_eq(bytes, f.as_bytes())))
    }

    /// Whether a `Connection` token names a header Gatehouse sets or owns.
    pub fn is_protected_token(&self, token: &[u8]) -> bool {
        // `"X-Real-IP"`: a quoted spelling names the same header to a lenient parser.
        let token = token.trim_ascii();
        let token = token
            .strip_prefix(b"\"")
            .and_then(|t| t.strip_suffix(b"\""))
            .unwrap_or(token)
            .trim_ascii();
        self.is_owned_bytes(token)
            || canonical_starts_with(token, FORWARDED_PREFIX)
            || FORWARDING.iter().any(|f| canonical_eq(token, f.as_bytes()))
    }

    /// Removes every value of every owned header. Returns how many names were removed.
    pub fn strip(&self, headers: &mut impl HeaderEdit) -> usize {
        let doomed: Vec<HeaderName> = headers
            .map()
            .keys()
            .filter(|n| self.is_owned(n))
            .cloned()
            .collect();
        for name in &doomed {
            headers.remove(name);
        }
        doomed.len()
    }

    /// Removes from `Connection` every token that names a header Gatehouse sets, keeping the
    /// others (`keep-alive`, `close`, `upgrade`, the app's own) in order. Returns how many
    /// tokens were removed.
    pub fn clean_connection(&self, headers: &mut impl HeaderEdit) -> usize {
        let mut removed = 0;
        let mut kept: Vec<&[u8]> = Vec::new();
        for value in headers.map().get_all(CONNECTION) {
            for token in value.as_bytes().split(|b| *b == b',') {
                let trimmed = token.trim_ascii();
                if trimmed.is_empty() {
                    continue;
                }
                if self.is_protected_token(trimmed) {
                    removed += 1;
                } else {
                    kept.push(trimmed);
                }
            }
        }
        if removed == 0 {
            return 0;
        }
        let joined = kept.join(&b", "[..]);
        let rebuilt = (!joined.is_empty())
            .then(|| HeaderValue::from_bytes(&joined).ok())
            .flatten();
        headers.remove(&CONNECTION);
        if let Some(value) = rebuilt {
            headers.insert("Connection", value);
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;
    use proptest::prelude::*;
    use std::str::FromStr;

    fn hygiene() -> HeaderHygiene {
        HeaderHygiene::new(
            &[
                HeaderName::from_static("x-auth-request-user"),
                HeaderName::from_static("x-auth-request-email"),
            ],
            true,
        )
    }

    #[test]
    fn identity_headers_are_stripped_in_any_case_and_with_underscores() {
        let mut h = HeaderMap::new();
        for name in [
            "X-Auth-Request-User",
            "x_auth_request_user",
            "X_AUTH-Request_EMAIL",
            "X-Gatehouse-Anything",
            "x_gatehouse_user_id",
        ] {
            h.append(
                HeaderName::from_str(name).unwrap(),
                "mallory".parse().unwrap(),
            );
        }
        h.append("accept", "text/html".parse().unwrap());
        assert_eq!(hygiene().strip(&mut h), 5);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("accept"));
    }

    #[test]
    fn every_duplicate_value_goes() {
        let mut h = HeaderMap::new();
        h.append("x-auth-request-user", "a".parse().unwrap());
        h.append("x-auth-request-user", "b".parse().unwrap());
        hygiene().strip(&mut h);
        assert!(h.get_all("x-auth-request-user").iter().next().is_none());
    }

    #[test]
    fn look_alike_names_are_kept() {
        let mut h = HeaderMap::new();
        h.append("x-auth-request-userx", "a".parse().unwrap());
        h.append("x-gatehouse", "a".parse().unwrap());
        h.append("remote-userx", "a".parse().unwrap());
        h.append("x-forwarded-users", "a".parse().unwrap());
        assert_eq!(hygiene().strip(&mut h), 0);
    }

    /// The forwarding headers in their own spelling are left to `forwarded`; other spellings
    /// are stripped.
    #[test]
    fn forwarding_headers_are_kept_for_forwarded_and_underscore_spellings_stripped() {
        let mut h = HeaderMap::new();
        for name in [
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "x-real-ip",
        ] {
            h.append(name, "1.2.3.4".parse().unwrap());
        }
        for name in [
            "x_forwarded_for",
            "x_real_ip",
            "x-forwarded_host",
            "x_request_id",
        ] {
            h.append(name, "6.6.6.6".parse().unwrap());
        }
        assert_eq!(hygiene().strip(&mut h), 4);
        assert_eq!(h.len(), 4);
        assert!(h.keys().all(|k| !k.as_str().contains('_')));
    }

    /// `strip_foreign_identity = false` keeps other proxies' headers.
    #[test]
    fn the_foreign_list_can_be_turned_off() {
        let h = HeaderHygiene::new(&[], false);
        assert!(!h.is_owned(&HeaderName::from_static("x-forwarded-user")));
        assert!(!h.is_owned(&HeaderName::from_static("remote-user")));
        assert!(h.is_owned(&HeaderName::from_static("x-gatehouse-user-id")));
    }

    #[test]
    fn connection_keeps_other_tokens_in_order() {
        let mut h = HeaderMap::new();
        h.append(
            "connection",
            "keep-alive, X-Auth-Request-User,x_real_ip , Upgrade"
                .parse()
                .unwrap(),
        );
        h.append(
            "connection",
            "\"X-Forwarded-Anything\", X-App-Hop, forwarded"
                .parse()
                .unwrap(),
        );
        assert_eq!(hygiene().clean_connection(&mut h), 4);
        assert_eq!(h["connection"], "keep-alive, Upgrade, X-App-Hop");
        let mut h = HeaderMap::new();
        h.append(
            "connection",
            "X-Request-Id, X-Gatehouse-Roles".parse().unwrap(),
        );
        assert_eq!(hygiene().clean_connection(&mut h), 2);
        assert!(!h.contains_key("connection"));
    }

    /// The canonical (lower-case, `-`) names every owned header may be written as.
    fn owned_canonical() -> Vec<String> {
        let mut names: Vec<String> = [
            "x-auth-request-user",
            "x-auth-request-email",
            "x-gatehouse-user-id",
            "x-gatehouse-identity",
            "x-gatehouse-anything-else",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        names.extend(FOREIGN_NAMES.iter().map(|s| s.to_string()));
        names.extend(FOREIGN_PREFIXES.iter().map(|p| format!("{p}x")));
        names
    }

    /// A spelling of `name`: each letter in either case, each `-` as `-` or `_`.
    fn spelling(name: String) -> impl Strategy<Value = String> {
        let n = name.len();
        (
            proptest::collection::vec(any::<bool>(), n),
            proptest::collection::vec(any::<bool>(), n),
        )
            .prop_map(move |(upper, underscore)| {
                name.bytes()
                    .zip(upper.iter().zip(&underscore))
                    .map(|(b, (&up, &us))| match b {
                        b'-' if us => '_',
                        b if up => b.to_ascii_uppercase() as char,
                        b => b as char,
                    })
                    .collect()
            })
    }

    fn owned_spelling() -> impl Strategy<Value = String> {
        proptest::sample::select(owned_canonical()).prop_flat_map(spelling)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        /// Every spelling of every owned or foreign name is stripped (all duplicates), and
        /// names outside the lists are kept.
        #[test]
        fn every_spelling_of_an_owned_or_foreign_name_is_stripped(
            spoofs in proptest::collection::vec(owned_spelling(), 1..6),
            dupes in 1usize..3,
        ) {
            let mut h = HeaderMap::new();
            for s in &spoofs {
                for _ in 0..dupes {
                    h.append(HeaderName::from_str(s).unwrap(), "mallory".parse().unwrap());
                }
            }
            h.append("x-forwarded-for", "1.2.3.4".parse().unwrap());
            h.append("x-app", "kept".parse().unwrap());
            hygiene().strip(&mut h);
            let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
            left.sort();
            prop_assert_eq!(left, vec!["x-app", "x-forwarded-for"]);
        }

        /// Every spelling of an owned, foreign or forwarding name leaves `Connection`
        /// (with spaces, quotes, duplicates), and every other token stays.
        #[test]
        fn connection_never_keeps_a_token_naming_an_owned_header(
            owned in proptest::collection::vec(
                prop_oneof![
                    owned_spelling(),
                    proptest::sample::select(FORWARDING.to_vec())
                        .prop_flat_map(|f| spelling(f.to_string())),
                    spelling("x-forwarded-port".to_string()),
                ],
                1..12,
            ),
            others in proptest::collection::vec(
                proptest::sample::select(vec!["keep-alive", "close", "Upgrade", "X-App-Hop"]),
                0..3,
            ),
            spaces in proptest::collection::vec(0usize..3, 16),
        ) {
            let mut tokens: Vec<String> = owned.clone();
            tokens.extend(others.iter().map(|s| s.to_string()));
            let shift = spaces[0] % tokens.len();
            tokens.rotate_left(shift);
            let value = tokens
                .iter()
                .enumerate()
                .map(|(i, t)| format!("{}{t}{}", " ".repeat(spaces[i % 16]), " ".repeat(spaces[(i + 1) % 16])))
                .collect::<Vec<_>>()
                .join(",");
            let mut h = HeaderMap::new();
            h.append("connection", HeaderValue::from_str(&value).unwrap());
            prop_assert_eq!(hygiene().clean_connection(&mut h), owned.len());
            let left: Vec<String> = h
                .get_all("connection")
                .iter()
                .flat_map(|v| v.to_str().unwrap().split(',').map(|t| t.trim().to_string()).collect::<Vec<_>>())
                .filter(|t| !t.is_empty())
                .collect();
            let expected: Vec<String> = tokens.iter().filter(|t| !owned.contains(t)).cloned().collect();
            prop_assert_eq!(left, expected);
        }
    }
}
