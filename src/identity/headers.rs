//! Identity headers towards the app (and in forward-auth answers). Values are made safe and
//! stay distinct: `%`, control characters, bidi controls and other non-ASCII, and leading or
//! trailing spaces are percent-encoded (UTF-8), never dropped, so `adm\u{1}in` is sent as
//! `adm%01in` and can never read as `admin`; the encoding is one-to-one, so two different
//! values never give the same header. Lists (groups, roles) quote a member that holds `,`,
//! `"` or edge spaces (RFC 9110 quoted-string), so one group cannot read as two. A value
//! longer than [`MAX_VALUE_LEN`] is dropped with a log line and the request goes on.

use http::HeaderValue;

use super::Identity;
use crate::config::model::Headers;

/// The longest header value Gatehouse sends.
pub const MAX_VALUE_LEN: usize = 4096;

pub use crate::text::is_bidi_control;

/// Makes a header value from claim text: `%`, control characters and non-ASCII are
/// percent-encoded as UTF-8 bytes, as are spaces at either end (HTTP parsers strip them), and
/// the result is capped at [`MAX_VALUE_LEN`] (`None` beyond).
pub fn safe_value(text: &str) -> Option<HeaderValue> {
    let mut out = String::with_capacity(text.len());
    let last = text.len().saturating_sub(1);
    for (i, b) in text.bytes().enumerate() {
        let edge_space = (b == b' ' || b == b'\t') && (i == 0 || i == last);
        if b == b'%' || !(0x20..0x7f).contains(&b) || edge_space {
            out.push_str(&format!("%{b:02X}"));
        } else {
            out.push(char::from(b));
        }
        if out.len() > MAX_VALUE_LEN {
            return None;
        }
    }
    HeaderValue::from_str(&out).ok()
}

/// A list of names as one header value, comma-separated; a member that holds `,` or `"`,
/// has spaces at an end, or is empty is sent as a quoted-string (`"a,b"`, `"say \"hi\""`), so
/// the list splits back into exactly the members it was made of.
pub fn list_value(items: &[String]) -> String {
    let mut out = String::new();
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let plain = !item.is_empty()
            && !item.contains([',', '"'])
            && !item.starts_with(char::is_whitespace)
            && !item.ends_with(char::is_whitespace);
        if plain {
            out.push_str(item);
        } else {
            out.push('"');
            for c in item.chars() {
                if c == '"' || c == '\\' {
                    out.push('\\');
                }
                out.push(c);
            }
            out.push('"');
        }
    }
    out
}

/// Whether a username can go into headers and logs as it is: not empty, no control
/// characters, no bidi controls, no spaces at either end. JIT does not pick a username that
/// fails this (see [`super::jit`]); `users add` refuses one.
pub fn is_clean_username(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 256
        && !name.starts_with(char::is_whitespace)
        && !name.ends_with(char::is_whitespace)
        && !name.chars().any(|c| c.is_control() || is_bidi_control(c))
}

/// The identity headers for `identity`, by the configured names (Title-Case on the wire).
///
/// The email header is sent only for an email the IdP verified, or when `email_trusted` (the
/// connection has `trust_email`), or with `headers.pass_unverified_email`.
pub fn identity_headers(
    names: &Headers,
    identity: &Identity,
    email_trusted: bool,
) -> Vec<(http::HeaderName, HeaderValue)> {
    let mut out = Vec::with_capacity(8 + names.attributes.len());
    let mut push = |name: &http::HeaderName, value: Option<&str>| {
        if let Some(text) = value {
            match safe_value(text) {
                Some(v) => out.push((name.clone(), v)),
                None => {
                    tracing::info!(header = %name, "identity value dropped: too long")
                }
            }
        }
    };
    push(&names.user, Some(identity.user()));
    if identity.email_verified || email_trusted || names.pass_unverified_email {
        push(&names.email, identity.email.as_deref());
    }
    push(&names.preferred_username, identity.username.as_deref());
    if !identity.groups.is_empty() {
        push(&names.groups, Some(&list_value(&identity.groups)));
    }
    push(&names.name, identity.name.as_deref());
    push(&names.user_id, identity.user_id.as_deref());
    if !identity.roles.is_empty() {
        push(&names.roles, Some(&list_value(&identity.roles)));
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
pub fn wire_headers(names: &Headers, identity: &Identity, email_trusted: bool) -> WireHeaders {
    identity_headers(names, identity, email_trusted)
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
        let headers = identity_headers(&names(), &id, false);
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
        let headers = identity_headers(&names(), &id, false);
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
        assert_eq!(v, "alice%0D%0AX-Evil: 1");
    }

    #[test]
    fn non_ascii_is_percent_encoded_and_long_values_are_dropped() {
        assert_eq!(safe_value("Zoë").unwrap(), "Zo%C3%AB");
        assert!(safe_value(&"a".repeat(MAX_VALUE_LEN + 1)).is_none());
    }

    #[test]
    fn percent_edge_spaces_and_bidi_controls_are_encoded_not_dropped() {
        assert_eq!(safe_value("adm\u{1}in").unwrap(), "adm%01in");
        assert_eq!(safe_value(" admin ").unwrap(), "%20admin%20");
        assert_eq!(safe_value("Alice Smith").unwrap(), "Alice Smith");
        assert_eq!(safe_value("100%").unwrap(), "100%25");
        assert_eq!(safe_value("nimda\u{202E}").unwrap(), "nimda%E2%80%AE");
    }

    #[test]
    fn the_email_header_needs_a_verified_or_trusted_email_or_the_opt_in() {
        let mut id = Identity::new("corp", "s1");
        id.email = Some("a@example.com".into());
        let has_email = |names: &Headers, id: &Identity, trusted| {
            identity_headers(names, id, trusted)
                .iter()
                .any(|(k, _)| k == "x-auth-request-email")
        };
        assert!(!has_email(&names(), &id, false));
        assert!(has_email(&names(), &id, true));
        let mut opted = names();
        opted.pass_unverified_email = true;
        assert!(has_email(&opted, &id, false));
        id.email_verified = true;
        assert!(has_email(&names(), &id, false));
    }

    #[test]
    fn a_group_with_a_comma_is_quoted() {
        let groups: Vec<String> = ["staff", "a,b", "say \"hi\"", " pad", ""]
            .map(String::from)
            .to_vec();
        assert_eq!(list_value(&groups), r#"staff,"a,b","say \"hi\""," pad","""#);
    }

    /// Splits a list value the way an RFC 9110 list parser would (for the property tests).
    fn parse_list(value: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut chars = value.chars().peekable();
        loop {
            let mut item = String::new();
            if chars.peek() == Some(&'"') {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => item.extend(chars.next()),
                        '"' => break,
                        c => item.push(c),
                    }
                }
                assert!(
                    matches!(chars.next(), None | Some(',')),
                    "junk after a quoted member"
                );
            } else {
                for c in chars.by_ref() {
                    if c == ',' {
                        break;
                    }
                    item.push(c);
                }
            }
            out.push(item);
            if chars.peek().is_none() {
                break;
            }
        }
        out
    }

    /// Percent-decodes a header value back to text (for the property tests).
    fn decode(value: &str) -> String {
        percent_encoding::percent_decode_str(value)
            .decode_utf8()
            .unwrap()
            .into_owned()
    }

    mod hostile {
        use super::*;
        use proptest::prelude::*;

        /// Text from a hostile alphabet: controls, bidi controls, spaces, `%`, `,`, `"`, `\\`,
        /// non-ASCII, and plain letters.
        fn hostile_text() -> impl Strategy<Value = String> {
            let pieces = prop_oneof![
                Just("a".to_string()),
                Just("admin".to_string()),
                Just(" ".to_string()),
                Just("\t".to_string()),
                Just("%".to_string()),
                Just("%41".to_string()),
                Just(",".to_string()),
                Just("\"".to_string()),
                Just("\\".to_string()),
                Just("\r\n".to_string()),
                Just("é".to_string()),
                (0u32..0x20).prop_map(|c| char::from_u32(c).unwrap().to_string()),
                (0x7fu32..0xa0).prop_map(|c| char::from_u32(c).unwrap().to_string()),
                proptest::sample::select(vec![
                    '\u{200E}', '\u{200F}', '\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}',
                    '\u{202E}', '\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}', '\u{061C}',
                ])
                .prop_map(|c| c.to_string()),
                any::<char>().prop_map(|c| c.to_string()),
            ];
            proptest::collection::vec(pieces, 0..8).prop_map(|v| v.concat())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            /// Every value is sendable, carries no control, bidi or edge-space byte, and
            /// decodes back to exactly the text it came from: nothing dropped, and no two
            /// values share a header.
            #[test]
            fn header_values_are_safe_and_one_to_one(a in hostile_text(), b in hostile_text()) {
                let va = safe_value(&a).unwrap();
                let text = va.to_str().unwrap();
                prop_assert!(text.bytes().all(|c| (0x20..0x7f).contains(&c)));
                prop_assert_eq!(text.trim(), text);
                prop_assert_eq!(&decode(text), &a);
                let vb = safe_value(&b).unwrap();
                prop_assert_eq!(va == vb, a == b);
                if a != "admin" {
                    prop_assert_ne!(text, "admin");
                }
            }

            /// A list of hostile group names splits back into exactly those groups.
            #[test]
            fn group_lists_split_back_into_the_same_groups(
                groups in proptest::collection::vec(hostile_text(), 1..5),
            ) {
                let value = safe_value(&list_value(&groups)).unwrap();
                let parsed = parse_list(&decode(value.to_str().unwrap()));
                prop_assert_eq!(parsed, groups);
            }

            /// A clean username has no control, bidi control or edge space.
            #[test]
            fn clean_usernames_hold_nothing_hostile(name in hostile_text()) {
                if is_clean_username(&name) {
                    prop_assert_eq!(name.trim(), name.as_str());
                    prop_assert!(!name.chars().any(|c| c.is_control() || is_bidi_control(c)));
                }
            }
        }
    }
}
