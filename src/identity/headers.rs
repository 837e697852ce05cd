//! Identity headers towards the app (and in forward-auth answers). Values are made safe: no
//! control characters, non-ASCII percent-encoded, length-capped; a value that still cannot be
//! sent is dropped with a log line and the request goes on.

use http::HeaderValue;

use super::Identity;
use crate::config::model::Headers;

/// The longest header value Gatehouse sends.
pub const MAX_VALUE_LEN: usize = 4096;

/// Makes a header value from claim text: control characters are dropped, non-ASCII bytes
/// percent-encoded, and the result capped at [`MAX_VALUE_LEN`].
pub fn safe_value(text: &str) -> Option<HeaderValue> {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii_control() {
            continue;
        }
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        if out.len() > MAX_VALUE_LEN {
            return None;
        }
    }
    HeaderValue::from_str(&out).ok()
}

/// The identity headers for `identity`, by the configured names (Title-Case on the wire).
pub fn identity_headers(
    names: &Headers,
    identity: &Identity,
) -> Vec<(http::HeaderName, HeaderValue)> {
    let mut out = Vec::with_capacity(8 + names.attributes.len());
    let mut push = |name: &http::HeaderName, value: Option<&str>| {
        if let Some(text) = value {
            match safe_value(text) {
                Some(v) => out.push((name.clone(), v)),
                None => {
                    tracing::info!(header = %name, "identity value dropped: too long or not sendable")
                }
            }
        }
    };
    push(&names.user, Some(identity.user()));
    push(&names.email, identity.email.as_deref());
    push(&names.preferred_username, identity.username.as_deref());
    if !identity.groups.is_empty() {
        push(&names.groups, Some(&identity.groups.join(",")));
    }
    push(&names.name, identity.name.as_deref());
    push(&names.user_id, identity.user_id.as_deref());
    if !identity.roles.is_empty() {
        push(&names.roles, Some(&identity.roles.join(",")));
    }
    for (attribute, header) in &names.attributes {
        push(
            header,
            identity.attributes.get(attribute).map(String::as_str),
        );
    }
    push(
        &crate::headers::X_GATEHOUSE_CONNECTION,
        Some(&identity.connection),
    );
    out
}

/// A header list ready for pingora: each name as its Title-Case wire bytes (so inserting costs
/// no copy of the name) and its value. Built once per session and shared.
pub type WireHeaders = std::sync::Arc<[(bytes::Bytes, HeaderValue)]>;

/// `x-auth-request-user` as `X-Auth-Request-User`.
pub fn titled(name: &http::HeaderName) -> bytes::Bytes {
    let mut out = Vec::with_capacity(name.as_str().len());
    let mut upper = true;
    for b in name.as_str().bytes() {
        out.push(if upper { b.to_ascii_uppercase() } else { b });
        upper = b == b'-';
    }
    bytes::Bytes::from(out)
}

/// [`identity_headers`] with wire names, for inserting into proxied requests.
pub fn wire_headers(names: &Headers, identity: &Identity) -> WireHeaders {
    identity_headers(names, identity)
        .into_iter()
        .map(|(name, value)| (titled(&name), value))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Headers {
        let text = "[[upstreams]]\nurl = \"http://127.0.0.1:1\"\n[headers.attributes]\ndepartment = \"X-Auth-Request-Department\"\n";
        crate::config::parse(text).unwrap().headers
    }

    #[test]
    fn a_jit_identity_sends_its_user_id_roles_and_mapped_attributes() {
        let mut id = Identity::new("corp", "s1");
        id.username = Some("alice".into());
        id.user_id = Some("0190-abc".into());
        id.roles = vec!["editor".into(), "viewer".into()];
        id.attributes.insert("department".into(), "R&D".into());
        id.attributes.insert("unmapped".into(), "x".into());
        let headers = identity_headers(&names(), &id);
        let get = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k.as_str() == n)
                .map(|(_, v)| v.to_str().unwrap().to_string())
        };
        assert_eq!(get("x-gatehouse-user-id").as_deref(), Some("0190-abc"));
        assert_eq!(get("x-gatehouse-roles").as_deref(), Some("editor,viewer"));
        assert_eq!(get("x-auth-request-department").as_deref(), Some("R&D"));
        assert_eq!(headers.len(), 6, "{headers:?}");
    }

    #[test]
    fn a_claims_only_identity_sends_no_user_id() {
        let id = Identity::new("corp", "s1");
        let headers = identity_headers(&names(), &id);
        assert!(headers.iter().all(|(k, _)| k != "x-gatehouse-user-id"));
    }

    #[test]
    fn wire_names_are_title_case() {
        assert_eq!(
            titled(&http::HeaderName::from_static("x-auth-request-user")),
            "X-Auth-Request-User"
        );
    }

    #[test]
    fn control_characters_cannot_split_a_header() {
        let v = safe_value("alice\r\nX-Evil: 1").unwrap();
        assert_eq!(v, "aliceX-Evil: 1");
    }

    #[test]
    fn non_ascii_is_percent_encoded_and_long_values_are_dropped() {
        assert_eq!(safe_value("Zoë").unwrap(), "Zo%C3%AB");
        assert!(safe_value(&"a".repeat(MAX_VALUE_LEN + 1)).is_none());
    }
}
