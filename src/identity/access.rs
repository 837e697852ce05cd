//! Access rules: who may reach an upstream or a path once signed in. A [`Rules`] set passes
//! when every list in it that is not empty is satisfied: the email's domain (a verified
//! email, parsed strictly), one of the groups, one of the local roles, one of the connections.

use http::Method;

use super::Identity;
use crate::config::model::{AccessRule, EmailDomain, MfaLevel, Rules, Upstream};
use crate::uri::path::NormalPath;

/// Every rule that applies to protected requests, built once from config.
#[derive(Debug, Clone)]
pub struct AccessPolicy {
    /// By upstream index (the router's order).
    upstreams: Vec<Rules>,
    upstream_mfa: Vec<Option<MfaLevel>>,
    paths: Vec<AccessRule>,
    /// Whether any upstream or path sets `mfa` (else [`Self::mfa_level`] is always `None`).
    any_mfa: bool,
}

/// A refusal, and the connections that could still sign in to the route.
#[derive(Debug)]
pub struct Refused {
    pub rule: Denied,
    /// Empty when any connection might do.
    pub connections: Vec<String>,
}

impl AccessPolicy {
    /// `upstreams` in the router's order.
    pub fn new(upstreams: &[Upstream], paths: Vec<AccessRule>) -> Self {
        let upstream_mfa: Vec<Option<MfaLevel>> = upstreams.iter().map(|u| u.mfa).collect();
        let any_mfa =
            upstream_mfa.iter().any(Option::is_some) || paths.iter().any(|a| a.mfa.is_some());
        Self {
            upstreams: upstreams.iter().map(|u| u.rules.clone()).collect(),
            upstream_mfa,
            paths,
            any_mfa,
        }
    }

    /// The TOTP level this route sets, if it sets one: the strictest matching `[[access]]`
    /// rule's, else the upstream's. `None`: the connection's (or `[mfa]`'s) level applies.
    pub fn mfa_level(
        &self,
        upstream: usize,
        method: &Method,
        path: &NormalPath,
    ) -> Option<MfaLevel> {
        if !self.any_mfa {
            return None;
        }
        self.paths
            .iter()
            .filter(|a| a.mfa.is_some() && a.when.applies(method, path))
            .filter_map(|a| a.mfa)
            .max()
            .or_else(|| self.upstream_mfa.get(upstream).copied().flatten())
    }

    /// Whether no access rule is configured at all (the per-request check is skipped).
    pub fn is_open(&self) -> bool {
        self.upstreams.iter().all(Rules::is_empty) && self.paths.iter().all(|a| a.rules.is_empty())
    }

    /// Checks a signed-in request: the upstream's rules (`None`: no upstream, as for a
    /// forward-auth answer), then every `[[access]]` rule whose path matches either form of
    /// the path (see [`crate::config::model::PathRule::applies`]).
    pub fn check(
        &self,
        upstream: Option<usize>,
        method: &Method,
        path: &NormalPath,
        identity: &Identity,
        email_trusted: bool,
    ) -> Result<(), Refused> {
        let mut applicable = self
            .upstreams
            .get(upstream.unwrap_or(usize::MAX))
            .filter(|r| !r.is_empty())
            .into_iter()
            .chain(
                self.paths
                    .iter()
                    .filter(|a| a.when.applies(method, path))
                    .map(|a| &a.rules),
            );
        let failed = applicable
            .clone()
            .find_map(|rules| check(rules, identity, email_trusted).err());
        let Some(rule) = failed else {
            return Ok(());
        };
        // The connections every applicable rule would take (empty: any).
        let mut connections: Option<Vec<String>> = None;
        for rules in applicable.by_ref() {
            if rules.connections.is_empty() {
                continue;
            }
            connections = Some(match connections {
                None => rules.connections.clone(),
                Some(have) => have
                    .into_iter()
                    .filter(|c| rules.connections.contains(c))
                    .collect(),
            });
        }
        Err(Refused {
            rule,
            connections: connections.unwrap_or_default(),
        })
    }
}

/// The rule that refused a request; the `rule` label of `gatehouse_access_denied_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    EmailDomain,
    Group,
    Role,
    Connection,
}

impl Denied {
    pub fn label(self) -> crate::metrics::AccessRule {
        use crate::metrics::AccessRule;
        match self {
            Denied::EmailDomain => AccessRule::EmailDomain,
            Denied::Group => AccessRule::Group,
            Denied::Role => AccessRule::Role,
            Denied::Connection => AccessRule::Connection,
        }
    }
}

/// The domain of an address, lower case; `None` unless the address has exactly one `@`, a
/// plain local part and a host name for a domain. So `a@evil.com@good.com`, `"a@b"@c.com`,
/// `a@good.com.` and `a@good.com (x)` all have no domain, and pass no domain rule.
pub fn email_domain(email: &str) -> Option<String> {
    let (local, domain) = email.split_once('@')?;
    if domain.contains('@') || local.is_empty() || domain.is_empty() {
        return None;
    }
    let plain_local = local
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~.".contains(&b));
    let host = domain.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    (plain_local && host && domain.contains('.')).then(|| domain.to_ascii_lowercase())
}

fn domain_allowed(domain: &str, allowed: &EmailDomain) -> bool {
    domain == allowed.domain
        || (allowed.subdomains
            && domain
                .strip_suffix(allowed.domain.as_str())
                .is_some_and(|head| head.ends_with('.')))
}

/// Checks `identity` against `rules`. `email_trusted`: the IdP verified the email, or the
/// connection trusts its emails; an unverified email passes no domain rule.
pub fn check(rules: &Rules, identity: &Identity, email_trusted: bool) -> Result<(), Denied> {
    if !rules.connections.is_empty() && !rules.connections.contains(&identity.connection) {
        return Err(Denied::Connection);
    }
    if !rules.email_domains.is_empty() {
        let domain = identity
            .email
            .as_deref()
            .filter(|_| email_trusted)
            .and_then(email_domain);
        let ok = domain.is_some_and(|d| rules.email_domains.iter().any(|a| domain_allowed(&d, a)));
        if !ok {
            return Err(Denied::EmailDomain);
        }
    }
    if !rules.groups.is_empty() && !identity.groups.iter().any(|g| rules.groups.contains(g)) {
        return Err(Denied::Group);
    }
    if !rules.roles.is_empty() && !identity.roles.iter().any(|r| rules.roles.contains(r)) {
        return Err(Denied::Role);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domain(d: &str, subdomains: bool) -> EmailDomain {
        EmailDomain {
            domain: d.into(),
            subdomains,
        }
    }

    fn who(email: &str) -> Identity {
        let mut id = Identity::new("corp", "s1");
        id.email = Some(email.into());
        id.email_verified = true;
        id.groups = vec!["staff".into()];
        id
    }

    #[test]
    fn an_address_with_more_than_one_at_has_no_domain() {
        assert_eq!(email_domain("a@evil.com@good.com"), None);
        assert_eq!(email_domain("\"a@evil.com\"@good.com"), None);
        assert_eq!(email_domain("a@good.com."), None);
        assert_eq!(email_domain("a@good.com (x)"), None);
        assert_eq!(email_domain("a@good.com\r\n"), None);
        assert_eq!(email_domain("@good.com"), None);
        assert_eq!(email_domain("a@localhost"), None);
        assert_eq!(
            email_domain("A.B+tag@Good.COM").as_deref(),
            Some("good.com")
        );
    }

    #[test]
    fn multi_at_emails_do_not_pass_a_domain_rule() {
        let rules = Rules {
            email_domains: vec![domain("good.com", false)],
            ..Rules::default()
        };
        assert_eq!(check(&rules, &who("a@good.com"), true), Ok(()));
        for spoof in [
            "a@evil.com@good.com",
            "a@good.com@evil.com",
            "a%good.com@evil.com",
            "a@evilgood.com",
            "a@good.com.evil.com",
        ] {
            assert_eq!(
                check(&rules, &who(spoof), true),
                Err(Denied::EmailDomain),
                "{spoof}"
            );
        }
    }

    #[test]
    fn subdomains_pass_only_when_the_rule_says_so_and_the_email_must_be_verified() {
        let exact = Rules {
            email_domains: vec![domain("good.com", false)],
            ..Rules::default()
        };
        let subs = Rules {
            email_domains: vec![domain("good.com", true)],
            ..Rules::default()
        };
        assert!(check(&exact, &who("a@eu.good.com"), true).is_err());
        assert!(check(&subs, &who("a@eu.good.com"), true).is_ok());
        assert!(check(&subs, &who("a@good.com"), true).is_ok());
        assert!(check(&subs, &who("a@notgood.com"), true).is_err());
        assert_eq!(
            check(&exact, &who("a@good.com"), false),
            Err(Denied::EmailDomain)
        );
    }

    #[test]
    fn groups_roles_and_connections_each_need_one_match() {
        let rules = Rules {
            groups: vec!["admins".into()],
            ..Rules::default()
        };
        assert_eq!(check(&rules, &who("a@x.com"), true), Err(Denied::Group));
        let mut admin = who("a@x.com");
        admin.groups.push("admins".into());
        assert_eq!(check(&rules, &admin, true), Ok(()));

        let roles = Rules {
            roles: vec!["editor".into()],
            ..Rules::default()
        };
        assert_eq!(check(&roles, &admin, true), Err(Denied::Role));
        admin.roles.push("editor".into());
        assert_eq!(check(&roles, &admin, true), Ok(()));

        let conns = Rules {
            connections: vec!["other".into()],
            ..Rules::default()
        };
        assert_eq!(check(&conns, &admin, true), Err(Denied::Connection));
        assert_eq!(check(&Rules::default(), &admin, true), Ok(()));
    }
}
