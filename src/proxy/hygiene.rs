//! Header hygiene: before Gatehouse looks at a request, every incoming copy of a header it
//! owns is removed, so only Gatehouse can set them.
//!
//! A header is owned when its name, compared case-insensitively and with `_` read as `-`, is
//! one of the identity headers (or an extra `headers.strip` name), or starts with
//! `X-Gatehouse-`. `_` counts because many app servers (CGI, WSGI, PHP) turn `X-Auth-User`
//! and `X_Auth_User` into the same variable.

use http::HeaderName;

use crate::headers::HeaderEdit;

const OWNED_PREFIX: &[u8] = b"x-gatehouse-";

/// The owned names, built once at startup.
#[derive(Debug, Clone)]
pub struct HeaderHygiene {
    /// Lower-case, with `-`: the canonical form names are compared in.
    owned: Vec<Vec<u8>>,
}

/// `_` and `-` compare equal; `candidate` is already lower-case (HTTP/1 and h2 names are).
fn canonical_eq(candidate: &[u8], owned: &[u8]) -> bool {
    candidate.len() == owned.len()
        && candidate
            .iter()
            .zip(owned)
            .all(|(&c, &o)| c == o || (c == b'_' && o == b'-'))
}

fn canonical_starts_with(candidate: &[u8], prefix: &[u8]) -> bool {
    candidate.len() >= prefix.len() && canonical_eq(&candidate[..prefix.len()], prefix)
}

impl HeaderHygiene {
    pub fn new(owned: &[HeaderName]) -> Self {
        Self {
            owned: owned
                .iter()
                .map(|n| n.as_str().as_bytes().to_vec())
                .collect(),
        }
    }

    /// Whether an incoming header of this name must be removed.
    pub fn is_owned(&self, name: &HeaderName) -> bool {
        let name = name.as_str().as_bytes();
        canonical_starts_with(name, OWNED_PREFIX)
            || self.owned.iter().any(|o| canonical_eq(name, o))
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;
    use std::str::FromStr;

    fn hygiene() -> HeaderHygiene {
        HeaderHygiene::new(&[
            HeaderName::from_static("x-auth-request-user"),
            HeaderName::from_static("x-auth-request-email"),
        ])
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
        assert_eq!(hygiene().strip(&mut h), 0);
    }
}
