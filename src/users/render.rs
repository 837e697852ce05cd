//! How `gatehouse users` prints: aligned tables for a terminal, JSON (`--json`, `export
//! --format json`) and CSV (`export --format csv`) for scripts. Column sets and orders are
//! part of the interface; add to them at the end only.

use std::fmt::Write;

use super::ops::OpOutput;
use crate::store::audit::AuditEntry;
use crate::store::users::UserRecord;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    /// `--json`: the account as an operator reads it, without the internal fields (record
    /// version, sealed secret, recovery-code hashes, failure counter, last TOTP step).
    Json,
    /// `--json --raw`: the stored record as it is (secrets still masked by `ops::execute`).
    RawJson,
    Csv,
}

/// An account for `--json`: what an operator or a script needs, none of the internals.
/// Field names are those of the stored record, so `--raw` only adds fields.
fn public_user(u: &UserRecord) -> serde_json::Value {
    let m = &u.mfa;
    serde_json::json!({
        "id": u.id,
        "username": u.username,
        "email": u.email,
        "email_verified": u.email_verified,
        "display_name": u.display_name,
        "disabled": u.disabled,
        "roles": u.roles,
        "groups": u.groups,
        "attributes": u.attributes,
        "local_attributes": u.local_attributes,
        "links": u.links,
        "created_at": u.created_at,
        "updated_at": u.updated_at,
        "last_login_at": u.last_login_at,
        "mfa": {
            "enrolled": m.is_enrolled(),
            "enrolled_at": m.enrolled_at,
            "recovery_codes_left": m.recovery_codes_left(),
            "locked_until": m.locked_until,
        },
    })
}

fn public_users(users: &[UserRecord]) -> serde_json::Value {
    serde_json::Value::Array(users.iter().map(public_user).collect())
}

/// Unix seconds as `2026-12-01T08:35:30Z`; `-` for none.
pub fn timestamp(secs: Option<u64>) -> String {
    match secs {
        Some(s) => humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(s),
        )
        .to_string(),
        None => "-".to_string(),
    }
}

fn status(u: &UserRecord) -> &'static str {
    if u.disabled {
        "disabled"
    } else {
        "active"
    }
}

fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                let _ = write!(out, "{cell:<w$}  ");
            }
        }
        out.push('\n');
    };
    line(&mut out, headers.to_vec());
    for row in rows {
        line(&mut out, row.iter().map(String::as_str).collect());
    }
    out
}

fn users_table(users: &[UserRecord]) -> String {
    let rows: Vec<Vec<String>> = users
        .iter()
        .map(|u| {
            vec![
                u.id.clone(),
                u.username.clone(),
                u.email.clone().unwrap_or_else(|| "-".into()),
                if u.roles.is_empty() {
                    "-".into()
                } else {
                    u.roles.join(",")
                },
                status(u).to_string(),
                timestamp(u.last_login_at),
            ]
        })
        .collect();
    table(
        &["ID", "USERNAME", "EMAIL", "ROLES", "STATUS", "LAST LOGIN"],
        &rows,
    )
}

fn user_details(u: &UserRecord) -> String {
    let mut out = String::new();
    let map = |m: &std::collections::BTreeMap<String, String>| {
        if m.is_empty() {
            "-".to_string()
        } else {
            m.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let list = |l: &[String]| {
        if l.is_empty() {
            "-".to_string()
        } else {
            l.join(", ")
        }
    };
    let links: Vec<String> = u
        .links
        .iter()
        .map(|l| format!("{}:{}", l.connection, l.subject))
        .collect();
    for (k, v) in [
        ("id", u.id.clone()),
        ("username", u.username.clone()),
        ("email", u.email.clone().unwrap_or_else(|| "-".into())),
        ("email_verified", u.email_verified.to_string()),
        (
            "display_name",
            u.display_name.clone().unwrap_or_else(|| "-".into()),
        ),
        ("status", status(u).into()),
        ("roles", list(&u.roles)),
        ("groups", list(&u.groups)),
        ("attributes", map(&u.attributes)),
        ("local_attributes", map(&u.local_attributes)),
        ("links", list(&links)),
        ("created_at", timestamp(Some(u.created_at))),
        ("updated_at", timestamp(Some(u.updated_at))),
        ("last_login_at", timestamp(u.last_login_at)),
        ("mfa", mfa_status(u)),
        ("email_otp", email_otp_status(u)),
    ] {
        let _ = writeln!(out, "{k:<17} {v}");
    }
    out
}

/// `enrolled 2026-12-01T08:00:00Z, 9 recovery codes left` / `not enrolled`, and a lock.
fn mfa_status(u: &UserRecord) -> String {
    let m = &u.mfa;
    let mut text = if m.is_enrolled() {
        format!(
            "enrolled {}, {} recovery codes left",
            timestamp(m.enrolled_at),
            m.recovery_codes_left()
        )
    } else {
        "not enrolled".to_string()
    };
    if let Some(until) = m.locked_until {
        text.push_str(&format!(", locked until {}", timestamp(Some(until))));
    }
    if m.failures > 0 {
        text.push_str(&format!(", {} failed attempt(s)", m.failures));
    }
    text
}

/// Whether Email OTP can reach this account (when `[mfa] email_otp` is on), and why not.
fn email_otp_status(u: &UserRecord) -> String {
    use crate::mfa::policy::EmailOtpUnusable;
    let why = match (
        u.email.as_deref().filter(|e| !e.trim().is_empty()),
        u.email_verified,
    ) {
        (Some(email), true) => return format!("usable: codes go to {email} (verified)"),
        (None, _) => EmailOtpUnusable::NoEmail,
        (Some(_), false) => EmailOtpUnusable::Unverified,
    };
    format!("not usable: {}", why.reason())
}

fn audit_table(entries: &[AuditEntry]) -> String {
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
            vec![
                e.seq.to_string(),
                timestamp(Some(e.at)),
                e.actor.as_str().to_string(),
                e.action.as_str().to_string(),
                dash(&e.user_id),
                dash(&e.connection),
                if e.changed.is_empty() {
                    "-".into()
                } else {
                    e.changed.join(",")
                },
                dash(&e.reason),
            ]
        })
        .collect();
    table(
        &[
            "SEQ",
            "AT",
            "ACTOR",
            "ACTION",
            "USER",
            "CONNECTION",
            "CHANGED",
            "REASON",
        ],
        &rows,
    )
}

/// A CSV field, quoted when it has to be (RFC 4180).
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

fn users_csv(users: &[UserRecord]) -> String {
    let mut out = String::from(
        "id,username,email,email_verified,display_name,roles,groups,status,created_at,updated_at,last_login_at,links\n",
    );
    for u in users {
        let links: Vec<String> = u
            .links
            .iter()
            .map(|l| format!("{}:{}", l.connection, l.subject))
            .collect();
        let fields = [
            u.id.clone(),
            u.username.clone(),
            u.email.clone().unwrap_or_default(),
            u.email_verified.to_string(),
            u.display_name.clone().unwrap_or_default(),
            u.roles.join(";"),
            u.groups.join(";"),
            status(u).to_string(),
            timestamp(Some(u.created_at)),
            timestamp(Some(u.updated_at)),
            u.last_login_at
                .map(|t| timestamp(Some(t)))
                .unwrap_or_default(),
            links.join(";"),
        ];
        let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        out.push_str(&line.join(","));
        out.push('\n');
    }
    out
}

fn json<T: serde::Serialize>(value: &T) -> String {
    let mut text =
        serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    text.push('\n');
    text
}

/// The text to print for an operation's output.
pub fn render(output: &OpOutput, format: Format) -> String {
    match (output, format) {
        (OpOutput::Users(users), Format::Json) => json(&public_users(users)),
        (OpOutput::Users(users), Format::RawJson) => json(users),
        (OpOutput::Users(users), Format::Csv) => users_csv(users),
        (OpOutput::Users(users), Format::Table) => users_table(users),
        (OpOutput::User(user), Format::Json) => json(&public_user(user)),
        (OpOutput::User(user), Format::RawJson) => json(user),
        (OpOutput::User(user), Format::Csv) => users_csv(std::slice::from_ref(user)),
        (OpOutput::User(user), Format::Table) => user_details(user),
        (OpOutput::Audit(entries), Format::Json | Format::RawJson) => json(entries),
        (OpOutput::Audit(entries), _) => audit_table(entries),
        (OpOutput::Pruned { users, dry_run }, Format::Json) => {
            json(&serde_json::json!({ "dry_run": dry_run, "users": public_users(users) }))
        }
        (OpOutput::Pruned { users, dry_run }, Format::RawJson) => {
            json(&serde_json::json!({ "dry_run": dry_run, "users": users }))
        }
        (OpOutput::Pruned { users, dry_run }, _) => {
            let verb = if *dry_run { "would delete" } else { "deleted" };
            format!(
                "{verb} {} inactive account(s)\n{}",
                users.len(),
                users_table(users)
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--json` leaves out every internal field (version, sealed secret, recovery hashes,
    /// failure counter, last step) whatever their values; `--raw` keeps them.
    #[test]
    fn json_leaves_out_internal_fields_and_raw_keeps_them() {
        let mut u = UserRecord::new("alice".into(), 0);
        u.mfa.sealed_secret = Some("[sealed]".into());
        u.mfa.recovery_hashes = vec!["[hash]".into(); 3];
        u.mfa.failures = 4;
        u.mfa.last_used_step = Some(7);
        u.mfa.enrolled_at = Some(5);
        let internal = [
            "\"version\"",
            "sealed_secret",
            "recovery_hashes",
            "failures",
            "last_used_step",
        ];
        for output in [
            OpOutput::User(Box::new(u.clone())),
            OpOutput::Users(vec![u.clone()]),
            OpOutput::Pruned {
                users: vec![u.clone()],
                dry_run: true,
            },
        ] {
            let public = render(&output, Format::Json);
            let raw = render(&output, Format::RawJson);
            for field in internal {
                assert!(!public.contains(field), "{field} in {public}");
                assert!(raw.contains(field), "{field} not in {raw}");
            }
            assert!(public.contains("\"recovery_codes_left\": 3"), "{public}");
            assert!(public.contains("\"username\": \"alice\""), "{public}");
        }
    }

    /// `users mfa status` says whether Email OTP can reach the account, and why not.
    #[test]
    fn the_email_otp_line_says_why_an_account_cannot_use_it() {
        let mut u = UserRecord::new("alice".into(), 1);
        assert!(email_otp_status(&u).contains("no email address"));
        u.email = Some("alice@example.com".into());
        assert!(email_otp_status(&u).contains("not verified"));
        u.email_verified = true;
        assert_eq!(
            email_otp_status(&u),
            "usable: codes go to alice@example.com (verified)"
        );
    }

    #[test]
    fn csv_fields_with_commas_or_quotes_are_quoted() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }

    #[test]
    fn the_users_table_lines_up_its_columns() {
        let mut u = UserRecord::new("alice".into(), 0);
        u.email = Some("alice@example.com".into());
        let text = users_table(&[u]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0].find("USERNAME"), lines[1].find("alice"));
        assert!(lines[1].contains("active") && lines[1].ends_with('-'));
        assert_eq!(timestamp(Some(0)), "1970-01-01T00:00:00Z");
    }
}
