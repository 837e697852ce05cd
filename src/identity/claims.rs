//! Claims (from an ID token, a userinfo answer or a bearer token) mapped to an [`Identity`] by
//! a connection's `claims` names.

use serde_json::{Map, Value};

use super::Identity;
use crate::config::model::ClaimNames;

fn text(claims: &Map<String, Value>, name: &str) -> Option<String> {
    match claims.get(name)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `groups` may be a list of strings, or one string with commas or spaces.
fn list(claims: &Map<String, Value>, name: &str) -> Vec<String> {
    match claims.get(name) {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        Some(Value::String(s)) => s
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|g| !g.is_empty())
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

/// `email_verified` as a boolean (some IdPs send the string "true").
fn flag(claims: &Map<String, Value>, name: &str) -> bool {
    match claims.get(name) {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
        _ => false,
    }
}

/// Builds the identity from verified claims; `None` without a `sub`.
pub fn identity_from_claims(
    connection: &str,
    names: &ClaimNames,
    claims: &Map<String, Value>,
) -> Option<Identity> {
    let attributes = names
        .attributes
        .iter()
        .filter_map(|name| attribute(claims, name).map(|v| (name.clone(), v)))
        .collect();
    Some(Identity {
        connection: connection.to_string(),
        subject: text(claims, "sub")?,
        username: text(claims, &names.username),
        email: text(claims, &names.email).map(|e| e.trim().to_string()),
        email_verified: flag(claims, "email_verified"),
        name: text(claims, &names.name),
        groups: list(claims, &names.groups),
        user_id: None,
        roles: Vec::new(),
        attributes,
    })
}

/// An attribute claim as text: strings and numbers as they are, booleans as `true`/`false`,
/// lists of strings comma-joined; objects are not kept.
fn attribute(claims: &Map<String, Value>, name: &str) -> Option<String> {
    match claims.get(name)? {
        Value::Bool(b) => Some(b.to_string()),
        Value::Array(_) => Some(list(claims, name).join(",")).filter(|s| !s.is_empty()),
        _ => text(claims, name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> ClaimNames {
        ClaimNames {
            username: "preferred_username".into(),
            email: "email".into(),
            groups: "roles".into(),
            name: "name".into(),
            attributes: vec!["department".into(), "clearance".into(), "tags".into()],
        }
    }

    #[test]
    fn configured_attribute_claims_are_kept_as_text() {
        let claims = serde_json::json!({
            "sub": "u1", "department": "R&D", "clearance": 3, "tags": ["a", "b"], "other": "x"
        });
        let id = identity_from_claims("corp", &names(), claims.as_object().unwrap()).unwrap();
        assert_eq!(id.attributes.get("department").unwrap(), "R&D");
        assert_eq!(id.attributes.get("clearance").unwrap(), "3");
        assert_eq!(id.attributes.get("tags").unwrap(), "a,b");
        assert!(!id.attributes.contains_key("other"));
    }

    #[test]
    fn claims_are_mapped_by_the_configured_names() {
        let claims = serde_json::json!({
            "sub": "u1", "preferred_username": "alice", "email": "a@example.com",
            "email_verified": "true", "roles": ["admin", "staff"], "name": "Alice"
        });
        let id = identity_from_claims("corp", &names(), claims.as_object().unwrap()).unwrap();
        assert_eq!(id.user(), "alice");
        assert!(id.email_verified);
        assert_eq!(id.groups, vec!["admin", "staff"]);
    }

    #[test]
    fn a_token_without_sub_gives_no_identity() {
        let claims = serde_json::json!({"email": "a@example.com"});
        assert!(identity_from_claims("corp", &names(), claims.as_object().unwrap()).is_none());
    }

    #[test]
    fn groups_given_as_one_string_are_split() {
        let claims = serde_json::json!({"sub": "u", "roles": "a, b c"});
        let id = identity_from_claims("corp", &names(), claims.as_object().unwrap()).unwrap();
        assert_eq!(id.groups, vec!["a", "b", "c"]);
        assert_eq!(id.user(), "u");
    }
}
