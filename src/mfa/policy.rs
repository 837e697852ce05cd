//! How much TOTP a login or a request needs, and the conflict this can set up: a connection
//! with `jit = false` keeps no local account, so its users cannot hold a second factor. Where
//! TOTP is required they are refused (`when_no_local_account = "deny"`, the default) or let
//! through without it (`"skip"`). [`warnings`] finds each such place in a config before it can
//! break a login; `check-config` and `serve` print them.
//!
//! Levels: `[mfa] totp`, overridden by a connection's `mfa` (at login), overridden by an
//! upstream's `mfa`, overridden by the strictest matching `[[access]]` rule's `mfa` (per
//! request: step-up).

use crate::config::model::{Config, Connection, MfaLevel, NoLocalAccount, Rules};

/// What a login or a request must do about the second factor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MfaDecision {
    /// Nothing to ask (not required here, already done, or skipped for a JIT-off user).
    Pass,
    /// Ask for the code (enrolling first when the account has none).
    Challenge,
    /// Required, but the user has no local account and the config says deny.
    Conflict,
}

/// What the second-factor rule needs to know about the user.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Standing {
    /// The user has a local (JIT) account, so a local factor can be asked for.
    pub local_account: bool,
    /// The account has a second factor enrolled (only known at login; `false` per request, so
    /// `optional` asks nothing beyond the login).
    pub enrolled: bool,
    /// This session (or token) already passed a second factor.
    pub done: bool,
}

/// The one rule for logins and requests alike.
pub fn decide(
    level: MfaLevel,
    when_no_local_account: NoLocalAccount,
    user: Standing,
) -> MfaDecision {
    let asked = match level {
        MfaLevel::Required => true,
        MfaLevel::Optional => user.enrolled && user.local_account,
        MfaLevel::Off => false,
    };
    match (
        asked && !user.done,
        user.local_account,
        when_no_local_account,
    ) {
        (false, _, _) => MfaDecision::Pass,
        (true, true, _) => MfaDecision::Challenge,
        (true, false, NoLocalAccount::Skip) => MfaDecision::Pass,
        (true, false, NoLocalAccount::Deny) => MfaDecision::Conflict,
    }
}

/// The level a login through `connection` asks for.
pub fn login_level(config: &crate::config::model::Mfa, connection: &Connection) -> MfaLevel {
    connection.mfa.unwrap_or(config.totp)
}

fn reaches(rules: &Rules, connection: &Connection) -> bool {
    rules.connections.is_empty() || rules.connections.contains(&connection.id)
}

/// One line per (JIT-off connection, place where TOTP is required) that would refuse its
/// users, with the fix. Empty when `when_no_local_account = "skip"`.
pub fn warnings(config: &Config) -> Vec<String> {
    if config.mfa.when_no_local_account == NoLocalAccount::Skip {
        return Vec::new();
    }
    let mut out = Vec::new();
    for (i, c) in config
        .connections
        .iter()
        .enumerate()
        .filter(|(_, c)| !c.jit)
    {
        let mut places = Vec::new();
        if login_level(&config.mfa, c) == MfaLevel::Required {
            let source = if c.mfa.is_some() {
                format!("connections[{i}].mfa")
            } else {
                "mfa.totp".to_string()
            };
            places.push(format!("every route ({source} = \"required\")"));
        }
        for u in &config.upstreams {
            if u.mfa == Some(MfaLevel::Required) && reaches(&u.rules, c) {
                places.push(format!(
                    "upstream `{}` (path_prefix `{}`)",
                    u.id, u.path_prefix
                ));
            }
        }
        for (j, a) in config.access.iter().enumerate() {
            if a.mfa == Some(MfaLevel::Required) && reaches(&a.rules, c) {
                let path = match &a.when.path {
                    crate::config::model::PathMatch::Exact(p)
                    | crate::config::model::PathMatch::Prefix(p) => p.clone(),
                    crate::config::model::PathMatch::Regex(r) => r.as_str().to_string(),
                };
                places.push(format!("`{path}` (access[{j}])"));
            }
        }
        for place in places {
            out.push(format!(
                "connection `{id}` has jit = false but can reach {place}, where TOTP is required: \
                 it keeps no local account to hold a second factor, so its users get a 403 there. \
                 Fix: set jit = true on connections[{i}], or [mfa] when_no_local_account = \"skip\" \
                 to let them in without MFA, or allowed_connections on that route to keep them off it.",
                id = c.id
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        config_with("", extra)
    }

    /// `access_keys` go into the `/admin` rule, `extra` after the connections.
    fn config_with(access_keys: &str, extra: &str) -> Config {
        crate::config::parse(&format!(
            r#"
            [[upstreams]]
            url = "http://127.0.0.1:1"
            [[access]]
            path = "/admin"
            match = "prefix"
            mfa = "required"
            {access_keys}
            [[connections]]
            id = "corp"
            issuer = "https://idp.example.com"
            client_id = "c"
            client_secret = "s"
            [[connections]]
            id = "partner"
            issuer = "https://partner.example.com"
            client_id = "c"
            client_secret = "s"
            jit = false
            {extra}
            "#
        ))
        .unwrap()
    }

    #[test]
    fn the_decision_follows_level_account_and_choice() {
        use MfaDecision::*;
        let deny = NoLocalAccount::Deny;
        let skip = NoLocalAccount::Skip;
        let user = |local_account, enrolled, done| Standing {
            local_account,
            enrolled,
            done,
        };
        assert_eq!(
            decide(MfaLevel::Required, deny, user(true, false, false)),
            Challenge
        );
        assert_eq!(
            decide(MfaLevel::Required, deny, user(true, true, true)),
            Pass
        );
        assert_eq!(
            decide(MfaLevel::Required, deny, user(false, false, false)),
            Conflict
        );
        assert_eq!(
            decide(MfaLevel::Required, skip, user(false, false, false)),
            Pass
        );
        assert_eq!(
            decide(MfaLevel::Optional, deny, user(true, true, false)),
            Challenge
        );
        assert_eq!(
            decide(MfaLevel::Optional, deny, user(true, false, false)),
            Pass
        );
        assert_eq!(
            decide(MfaLevel::Optional, deny, user(false, true, false)),
            Pass
        );
        assert_eq!(decide(MfaLevel::Off, deny, user(false, false, false)), Pass);
    }

    #[test]
    fn a_jit_off_connection_that_reaches_a_required_route_is_warned_about() {
        let w = warnings(&config(""));
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("`partner`") && w[0].contains("/admin"),
            "{}",
            w[0]
        );
        assert!(w[0].contains("when_no_local_account"), "the fix is named");
    }

    #[test]
    fn skip_or_keeping_the_connection_off_the_route_silences_the_warning() {
        assert!(warnings(&config("[mfa]\nwhen_no_local_account = \"skip\"")).is_empty());
        let kept_off = config_with("allowed_connections = [\"corp\"]", "");
        assert!(warnings(&kept_off).is_empty());
    }

    #[test]
    fn a_global_requirement_warns_for_every_route() {
        let w = warnings(&config("[mfa]\ntotp = \"required\""));
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("every route (mfa.totp"));
    }
}
