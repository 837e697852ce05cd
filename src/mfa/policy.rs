//! How much TOTP a login or a request needs, and the conflict this can set up: a connection
//! with `jit = false` keeps no local account, so its users cannot hold a second factor. Where
//! TOTP is required they are refused (`when_no_local_account = "deny"`, the default) or let
//! through without it (`"skip"`). [`warnings`] finds each such place in a config before it can
//! break a login; `check-config` and `serve` print them.
//!
//! Levels: the stricter of `[mfa] totp` and `[mfa] email_otp` ([`crate::config::model::Mfa::level`]),
//! overridden by a connection's `mfa` (at login), overridden by an upstream's `mfa`, overridden
//! by the strictest matching `[[access]]` rule's `mfa` (per request: step-up). A level asks for
//! "a second factor": either factor the account can use ([`Factors`]) satisfies it.

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

/// The second factors an account can use here, in the order the page offers them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Factors {
    /// TOTP: enrolled, or can be enrolled (TOTP is not turned off while Email OTP is on).
    pub totp: bool,
    /// Whether the account has TOTP enrolled already.
    pub totp_enrolled: bool,
    /// Email OTP: on in `[mfa]` and the account has a verified email.
    pub email_otp: bool,
}

/// Why an account cannot use Email OTP (for the page and `users mfa status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmailOtpUnusable {
    /// `[mfa] email_otp = "off"`.
    Off,
    /// The account has no email address.
    NoEmail,
    /// The account's email is not verified by the IdP.
    Unverified,
}

impl EmailOtpUnusable {
    pub fn reason(self) -> &'static str {
        match self {
            EmailOtpUnusable::Off => "Email OTP is off ([mfa] email_otp = \"off\")",
            EmailOtpUnusable::NoEmail => "the account has no email address",
            EmailOtpUnusable::Unverified => {
                "the account's email address is not verified by the IdP"
            }
        }
    }
}

/// Whether Email OTP can go to this account (`Ok`: the verified address).
pub fn email_otp_target<'a>(
    config: &crate::config::model::Mfa,
    email: Option<&'a str>,
    verified: bool,
) -> Result<&'a str, EmailOtpUnusable> {
    if config.email_otp.level == MfaLevel::Off {
        return Err(EmailOtpUnusable::Off);
    }
    let email = email
        .filter(|e| !e.trim().is_empty())
        .ok_or(EmailOtpUnusable::NoEmail)?;
    if !verified {
        return Err(EmailOtpUnusable::Unverified);
    }
    Ok(email)
}

/// The factors an account with this TOTP state and email can use.
pub fn factors(
    config: &crate::config::model::Mfa,
    totp_enrolled: bool,
    email: Option<&str>,
    email_verified: bool,
) -> Factors {
    // TOTP stays available (enrol on first use) unless the operator turned it off and chose
    // Email OTP instead.
    let totp_offered = config.totp != MfaLevel::Off || config.email_otp.level == MfaLevel::Off;
    Factors {
        totp: totp_enrolled || totp_offered,
        totp_enrolled,
        email_otp: email_otp_target(config, email, email_verified).is_ok(),
    }
}

impl Factors {
    /// Whether the account "has" a second factor for `optional` levels: TOTP enrolled, or an
    /// address Email OTP can go to while Email OTP is on.
    pub fn any_set_up(&self) -> bool {
        self.totp_enrolled || self.email_otp
    }
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
    connection.mfa.unwrap_or(config.level())
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
            } else if config.mfa.totp == MfaLevel::Required {
                "mfa.totp".to_string()
            } else {
                "mfa.email_otp".to_string()
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
                "connection `{id}` has jit = false but can reach {place}, where a second factor \
                 (TOTP or Email OTP) is required: it keeps no local account to hold one, so its users get a 403 there. \
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

    /// Email OTP required globally is a second-factor requirement like TOTP's: the JIT-off
    /// connection is warned about for every route, naming `mfa.email_otp`.
    #[test]
    fn a_global_email_otp_requirement_warns_for_every_route() {
        let w = warnings(&config(
            "[mfa]\nemail_otp = \"required\"\n[smtp]\nhost = \"127.0.0.1\"\nfrom = \"g@example.com\"\nsecurity = \"none\"",
        ));
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("every route (mfa.email_otp"), "{}", w[0]);
    }

    /// Either factor satisfies a requirement: an account offers Email OTP only with a verified
    /// address while Email OTP is on, and TOTP unless it was turned off in favour of Email OTP.
    #[test]
    fn the_factors_follow_the_config_and_the_account() {
        let mut mfa = config("").mfa;
        let off = factors(&mfa, false, Some("a@example.com"), true);
        assert_eq!((off.totp, off.email_otp), (true, false));
        mfa.email_otp.level = MfaLevel::Optional;
        let both = factors(&mfa, false, Some("a@example.com"), true);
        assert_eq!(
            (both.totp, both.email_otp),
            (false, true),
            "totp = off, email on"
        );
        mfa.totp = MfaLevel::Optional;
        let both = factors(&mfa, true, Some("a@example.com"), true);
        assert_eq!((both.totp, both.email_otp), (true, true));
        assert_eq!(
            email_otp_target(&mfa, Some("a@example.com"), false),
            Err(EmailOtpUnusable::Unverified)
        );
        assert_eq!(
            email_otp_target(&mfa, None, true),
            Err(EmailOtpUnusable::NoEmail)
        );
        assert_eq!(
            email_otp_target(&mfa, Some("  "), true),
            Err(EmailOtpUnusable::NoEmail)
        );
        assert!(!factors(&mfa, false, Some("a@example.com"), false).any_set_up());
    }

    #[test]
    fn a_global_requirement_warns_for_every_route() {
        let w = warnings(&config("[mfa]\ntotp = \"required\""));
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("every route (mfa.totp"));
    }
}
