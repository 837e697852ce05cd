//! Checks on a valid config for mistakes that would fail open or leave a rule doing nothing:
//! run by `check-config` (errors exit 2, warnings go to stderr) and by `serve` before it
//! starts. `validate` answers "can this config be read"; this answers "does it do what it
//! seems to say".

use std::net::SocketAddr;

use super::model::{Config, HexColor, HostMatch, Pages, PathMatch, PathRule};
use super::ConfigError;

/// What [`lint`] found.
#[derive(Debug, Default)]
pub struct Findings {
    /// Mistakes that stop `check-config` and `serve`.
    pub errors: Vec<ConfigError>,
    /// Rules that can never take effect, risky listeners: printed, not fatal.
    pub warnings: Vec<String>,
}

/// `[smtp] security = "none"` to a host that is not this machine: codes and the SMTP password
/// would cross the network in clear.
fn smtp_in_clear(config: &Config) -> Option<String> {
    let smtp = config.mfa.smtp.as_ref()?;
    let host = smtp.host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    (smtp.security == super::model::SmtpSecurity::None && !loopback).then(|| {
        format!(
            "smtp.security: \"none\" sends the one-time codes (and any SMTP password) to `{}` in \
             clear; use \"starttls\" or \"tls\", or a relay on this machine",
            smtp.host
        )
    })
}

/// Paths Gatehouse answers itself; no `[[public]]` or `[[access]]` rule reaches them.
const RESERVED_EXACT: &[&str] = &["/ping", "/ready", "/.well-known/gatehouse/jwks.json"];
const RESERVED_PREFIX: &str = "/oauth2";

fn eq(a: &str, b: &str, case_sensitive: bool) -> bool {
    if case_sensitive {
        a == b
    } else {
        a.eq_ignore_ascii_case(b)
    }
}

/// Whether `path` is `prefix` or lies below it, segment by segment.
fn under(path: &str, prefix: &str, case_sensitive: bool) -> bool {
    let (p, q) = (path.as_bytes(), prefix.as_bytes());
    if p.len() < q.len() {
        return false;
    }
    let (head, rest) = p.split_at(q.len());
    let head_ok = if case_sensitive {
        head == q
    } else {
        head.eq_ignore_ascii_case(q)
    };
    head_ok && (q.ends_with(b"/") || rest.is_empty() || rest.starts_with(b"/"))
}

/// The literal path of a prefix or exact rule.
fn literal(rule: &PathRule) -> Option<&str> {
    match &rule.path {
        PathMatch::Exact(p) | PathMatch::Prefix(p) => Some(p),
        PathMatch::Regex(_) => None,
    }
}

/// Whether every request `inner` matches is matched by `outer` too.
fn covers(outer: &PathRule, inner: &PathRule) -> bool {
    let methods = outer.methods.is_empty()
        || (!inner.methods.is_empty() && inner.methods.iter().all(|m| outer.methods.contains(m)));
    if !methods || (outer.case_sensitive && !inner.case_sensitive) {
        return false;
    }
    let cs = outer.case_sensitive;
    match (&outer.path, &inner.path) {
        (PathMatch::Prefix(p), PathMatch::Prefix(q) | PathMatch::Exact(q)) => under(q, p, cs),
        (PathMatch::Exact(p), PathMatch::Exact(q)) => eq(p, q, cs),
        _ => false,
    }
}

/// Whether every request the rule matches is answered by Gatehouse itself.
fn reserved(rule: &PathRule) -> bool {
    match &rule.path {
        PathMatch::Exact(p) => {
            RESERVED_EXACT.iter().any(|r| eq(p, r, rule.case_sensitive))
                || under(p, RESERVED_PREFIX, true)
        }
        PathMatch::Prefix(p) => under(p, RESERVED_PREFIX, true),
        PathMatch::Regex(_) => false,
    }
}

/// Whether a request the rule matches can reach some upstream.
fn served(config: &Config, rule: &PathRule) -> bool {
    let Some(path) = literal(rule) else {
        return true;
    };
    let prefix_rule = matches!(rule.path, PathMatch::Prefix(_));
    config.upstreams.iter().any(|u| {
        under(path, &u.path_prefix, false) || (prefix_rule && under(&u.path_prefix, path, false))
    })
}

fn same_host(a: &Option<HostMatch>, b: &Option<HostMatch>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(HostMatch::Exact(x)), Some(HostMatch::Exact(y)))
        | (Some(HostMatch::Suffix(x)), Some(HostMatch::Suffix(y))) => x.eq_ignore_ascii_case(y),
        _ => false,
    }
}

/// A warning per page background the accent colour has less than the 4.5:1 contrast WCAG AA
/// asks of text on: that mode keeps its built-in accent (see `web::templates`).
fn accent_contrast(pages: &Pages) -> Vec<String> {
    let Some(accent) = pages.accent_color else {
        return Vec::new();
    };
    [
        ("light", "white", HexColor::LIGHT_BG),
        ("dark", "#1a1a1a", HexColor::DARK_BG),
    ]
    .into_iter()
    .filter(|(_, _, bg)| !accent.readable_on(bg))
    .map(|(mode, name, bg)| {
        format!(
            "pages.accent_color: {} on the {mode}-mode background ({name}) has a contrast of \
                 {:.2}:1, below the 4.5:1 readable text needs; {mode} mode keeps the built-in \
                 accent",
            accent.css(),
            accent.contrast(&bg)
        )
    })
    .collect()
}

fn admin_is_exposed(addr: SocketAddr) -> bool {
    !addr.ip().is_loopback()
}

/// Every fail-open mistake and dead rule in `config`.
pub fn lint(config: &Config) -> Findings {
    let mut f = Findings::default();
    f.warnings.extend(accent_contrast(&config.pages));
    f.warnings.extend(smtp_in_clear(config));
    // Protected routes exist unless one public rule covers every path for every method.
    let all_public = config
        .public
        .iter()
        .any(|r| r.methods.is_empty() && matches!(&r.path, PathMatch::Prefix(p) if p == "/"));
    if config.connections.is_empty() && !all_public && !config.server.deny_all {
        f.errors.push(ConfigError {
            path: "connections".into(),
            message: "no [[connections]] entry, so protected routes have no way to sign in (and \
                      no bearer tokens): every protected request is refused. Add a \
                      [[connections]] entry, or set `deny_all = true` under [server] if that is \
                      meant"
                .into(),
        });
    }
    if config.server.deny_all && !config.connections.is_empty() {
        f.warnings.push(
            "server.deny_all: true has no effect, as [[connections]] are configured and protected \
             routes accept their sign-ins; remove deny_all"
                .into(),
        );
    }
    for (i, rule) in config.public.iter().enumerate() {
        if reserved(rule) {
            f.warnings.push(format!(
                "public[{i}].path: Gatehouse answers these paths itself, so this rule never matches; remove it"
            ));
        } else if !served(config, rule) {
            f.warnings.push(format!(
                "public[{i}].path: no [[upstreams]] path_prefix serves this path, so this rule never matches; fix the path or add an upstream"
            ));
        }
    }
    for (i, access) in config.access.iter().enumerate() {
        let rule = &access.when;
        if reserved(rule) {
            f.warnings.push(format!(
                "access[{i}].path: Gatehouse answers these paths itself, so this rule never applies; remove it"
            ));
        } else if let Some(j) = config.public.iter().position(|p| covers(p, rule)) {
            f.warnings.push(format!(
                "access[{i}].path: every request it matches is public (public[{j}]), and public requests are not checked, so this rule never applies; narrow public[{j}] or remove this rule"
            ));
        } else if !served(config, rule) {
            f.warnings.push(format!(
                "access[{i}].path: no [[upstreams]] path_prefix serves this path, so this rule never applies; fix the path"
            ));
        }
    }
    for (i, u) in config.upstreams.iter().enumerate() {
        if let Some(j) = config.upstreams[..i]
            .iter()
            .position(|e| same_host(&e.host, &u.host) && e.path_prefix == u.path_prefix)
        {
            f.warnings.push(format!(
                "upstreams[{i}].path_prefix: upstreams[{j}] has the same host and path_prefix and takes every request first, so no route reaches this upstream; change its host or path_prefix, or remove it"
            ));
        } else if under(&u.path_prefix, RESERVED_PREFIX, true)
            || RESERVED_EXACT.contains(&u.path_prefix.as_str())
        {
            f.warnings.push(format!(
                "upstreams[{i}].path_prefix: Gatehouse answers `{}` itself, so no route reaches this upstream; change path_prefix",
                u.path_prefix
            ));
        }
    }
    f.warnings.extend(session_warnings(config));
    if admin_is_exposed(config.server.admin_listen) {
        f.warnings.push(format!(
            "server.admin_listen: {} is not a loopback address and the admin listener has no TLS: /metrics, and the admin API and its token when [admin] token is set, travel in clear to anyone who can reach the port; bind it to 127.0.0.1, or keep the port on a private network only",
            config.server.admin_listen
        ));
    }
    f
}

/// Session settings that contradict each other or the listeners (only with connections:
/// without them no session cookie is ever set).
fn session_warnings(config: &Config) -> Vec<String> {
    let mut warnings = Vec::new();
    if config.connections.is_empty() {
        return warnings;
    }
    let session = &config.session;
    let https_url = config
        .login
        .external_url
        .as_deref()
        .is_some_and(|u| u.starts_with("https://"));
    if session.cookie_secure
        && config.server.tls.is_none()
        && !config.server.listen.is_empty()
        && !https_url
        && config.headers.trusted_proxies.is_empty()
    {
        warnings.push(
            "session.cookie_secure: the session cookie is marked Secure, but Gatehouse listens in              plain http (server.listen) with no https login.external_url and no              headers.trusted_proxies to say requests arrive over https: a browser on http never              sends the cookie back and every sign-in loops. Behind a TLS proxy set              login.external_url = \"https://...\" (and headers.trusted_proxies); for local http              testing set cookie_secure = false"
                .into(),
        );
    }
    if session.idle_timeout > session.lifetime {
        warnings.push(format!(
            "session.idle_timeout: {}s is longer than session.lifetime ({}s), so it never ends a              session; shorten idle_timeout or lengthen lifetime",
            session.idle_timeout.as_secs(),
            session.lifetime.as_secs()
        ));
    }
    warnings
}

#[cfg(test)]
mod tests {

    /// An accent colour gets a warning for each page background it is unreadable on (4.5:1),
    /// none where it is readable.
    #[test]
    fn an_accent_colour_is_warned_about_where_it_is_unreadable() {
        let warn = |c: &str| {
            accent_contrast(&Pages {
                accent_color: HexColor::parse(c),
                ..Pages::default()
            })
        };
        let dark_green = warn("#1f6f43");
        assert_eq!(dark_green.len(), 1);
        assert!(dark_green[0].starts_with("pages.accent_color: #1f6f43 on the dark-mode"));
        assert!(warn("#9cc3ff")[0].contains("light-mode"));
        assert_eq!(warn("#808080").len(), 2, "mid grey is unreadable on both");
        assert!(accent_contrast(&Pages::default()).is_empty());
    }

    use super::*;

    /// A config with one connection and these `[session]` / `[login]` / `[server]` keys.
    fn session_lint(server: &str, session: &str, login: &str, headers: &str) -> Vec<String> {
        let text = format!(
            "[server]\nadmin_listen = \"127.0.0.1:0\"\n{server}\n[[upstreams]]\nurl = \"http://127.0.0.1:1\"\n\
             [[connections]]\nid = \"c\"\nissuer = \"https://idp.example\"\nclient_id = \"g\"\n\
             client_secret = \"s\"\n[session]\n{session}\n[login]\n{login}\n[headers]\n{headers}\n"
        );
        session_warnings(&crate::config::parse(&text).expect("valid"))
    }

    /// A Secure cookie on a plain-http listener is warned about unless an https
    /// `external_url`, a trusted proxy (which says the request came over https) or
    /// `cookie_secure = false` explains it.
    #[test]
    fn a_secure_cookie_on_plain_http_is_warned_about_unless_https_is_said() {
        let warned = session_lint("", "", "", "");
        assert_eq!(warned.len(), 1, "{warned:?}");
        assert!(warned[0].starts_with("session.cookie_secure:"));
        assert!(warned[0].contains("login.external_url = \"https://"));
        for (session, login, headers) in [
            ("cookie_secure = false", "", ""),
            ("", "external_url = \"https://app.example.com\"", ""),
            ("", "", "trusted_proxies = [\"10.0.0.0/8\"]"),
        ] {
            assert!(
                session_lint("", session, login, headers).is_empty(),
                "{session} {login} {headers}"
            );
        }
        assert_eq!(
            session_lint("", "", "external_url = \"http://127.0.0.1:8080\"", "").len(),
            1
        );
    }

    /// An idle timeout longer than the lifetime is warned about; equal or shorter is not.
    #[test]
    fn an_idle_timeout_beyond_the_lifetime_is_warned_about() {
        let quiet = "cookie_secure = false";
        let warned = session_lint(
            "",
            &format!("{quiet}\nlifetime = \"1h\"\nidle_timeout = \"2h\""),
            "",
            "",
        );
        assert_eq!(warned.len(), 1, "{warned:?}");
        assert!(warned[0]
            .starts_with("session.idle_timeout: 7200s is longer than session.lifetime (3600s)"));
        for idle in ["1h", "30m"] {
            let text = format!("{quiet}\nlifetime = \"1h\"\nidle_timeout = \"{idle}\"");
            assert!(session_lint("", &text, "", "").is_empty(), "{idle}");
        }
    }

    /// `security = "none"` is warned about for any host that is not this machine, in every
    /// spelling of loopback accepted silently.
    #[test]
    fn smtp_in_clear_to_another_host_is_warned_about() {
        let smtp = |host: &str, security: &str| {
            lint_of(&format!(
                "[mfa]\nemail_otp = \"optional\"\n[smtp]\nhost = \"{host}\"\n\
                 security = \"{security}\"\nfrom = \"g@example.com\"\n"
            ))
            .warnings
            .into_iter()
            .filter(|w| w.starts_with("smtp.security"))
            .count()
        };
        for host in [
            "smtp.example.com",
            "10.0.0.5",
            "[2001:db8::1]",
            "localhost.example.com",
        ] {
            assert_eq!(smtp(host, "none"), 1, "{host}");
            assert_eq!(smtp(host, "starttls"), 0, "{host}");
        }
        for host in ["127.0.0.1", "127.8.9.10", "localhost", "LOCALHOST", "[::1]"] {
            assert_eq!(smtp(host, "none"), 0, "{host}");
        }
    }

    fn lint_of(extra: &str) -> Findings {
        let text = format!(
            "[server]\nadmin_listen = \"127.0.0.1:0\"\n[[upstreams]]\nurl = \"http://127.0.0.1:1\"\n{extra}"
        );
        lint(&crate::config::parse(&text).expect("valid"))
    }

    /// A config without connections or `deny_all` is an error; `deny_all` or an all-public
    /// config is not.
    #[test]
    fn no_way_to_sign_in_is_an_error_unless_said_on_purpose() {
        assert_eq!(lint_of("").errors.len(), 1);
        assert!(lint_of("").errors[0].message.contains("deny_all = true"));
        let text = "[server]\nadmin_listen = \"127.0.0.1:0\"\ndeny_all = true\n[[upstreams]]\nurl = \"http://127.0.0.1:1\"\n";
        assert!(lint(&crate::config::parse(text).unwrap()).errors.is_empty());
        assert!(lint_of("[[public]]\npath = \"/\"\nmatch = \"prefix\"\n")
            .errors
            .is_empty());
    }

    /// Dead rules are warnings, each naming its key.
    #[test]
    fn rules_that_can_never_take_effect_are_warned_about() {
        let w = lint_of(
            "[[public]]\npath = \"/docs\"\nmatch = \"prefix\"\n[[public]]\npath = \"/oauth2/x\"\n[[access]]\npath = \"/docs/admin\"\nmatch = \"prefix\"\nallowed_groups = [\"a\"]\n[[access]]\npath = \"/admin\"\nmatch = \"prefix\"\nallowed_groups = [\"a\"]\n",
        )
        .warnings;
        assert!(w.iter().any(|l| l.starts_with("public[1].path:")), "{w:?}");
        assert!(w.iter().any(|l| l.starts_with("access[0].path:")), "{w:?}");
        assert!(!w.iter().any(|l| l.starts_with("access[1]")), "{w:?}");
        assert!(!w.iter().any(|l| l.starts_with("public[0]")), "{w:?}");
    }

    /// A public rule for GET only does not cover an access rule for every method.
    #[test]
    fn a_narrower_public_rule_does_not_shadow_an_access_rule() {
        let w = lint_of(
            "[[public]]\npath = \"/docs\"\nmatch = \"prefix\"\nmethods = [\"GET\"]\n[[access]]\npath = \"/docs/admin\"\nmatch = \"prefix\"\nallowed_groups = [\"a\"]\n",
        )
        .warnings;
        assert!(w.is_empty(), "{w:?}");
    }
}
