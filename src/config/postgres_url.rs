//! The shape of a PostgreSQL connection URL (`[store] url`), checked without connecting, and
//! its redacted form for messages and logs.
//!
//! The form is libpq's URI, as the driver reads it:
//! `postgres[ql]://[USER[:PASSWORD]@]HOST[:PORT]/DATABASE[?KEY=VALUE&...]`, where HOST may be a
//! percent-encoded socket directory (`%2Frun%2Fpostgresql`) and the query may name `host=`
//! (a socket directory or a host), `port=`, `dbname=`, `user=`, `password=`, `sslmode=` and the
//! driver's other parameters. One host only.
//!
//! The password never appears in a message: everything before the last `@` is the user part
//! (a raw `/`, `?` or `#` in it is itself an error), and [`redact`] masks it and `password=`.

use std::net::{IpAddr, Ipv6Addr};

use percent_encoding::percent_decode_str;

const SCHEMES: [&str; 2] = ["postgres://", "postgresql://"];

/// The query parameters the driver (sqlx) reads, besides `options[NAME]`; any other is
/// refused, since the driver would only log and ignore it (with its value).
const PARAMETERS: [&str; 18] = [
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "sslmode",
    "ssl-mode",
    "sslrootcert",
    "ssl-root-cert",
    "ssl-ca",
    "sslcert",
    "ssl-cert",
    "sslkey",
    "ssl-key",
    "application_name",
    "options",
    "statement-cache-capacity",
];

/// Parameters accepted by libpq that the driver ignores: refused too, naming why.
const IGNORED: [&str; 3] = ["connect_timeout", "target_session_attrs", "passfile"];

const SSL_MODES: [&str; 6] = [
    "disable",
    "allow",
    "prefer",
    "require",
    "verify-ca",
    "verify-full",
];

/// Every problem with the shape of `text`; empty when it is a URL the store can try.
pub fn problems(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let Some(body) = SCHEMES.iter().find_map(|s| text.strip_prefix(s)) else {
        out.push(
            "must be a URL starting with postgres:// or postgresql:// \
             (postgres://USER@HOST:PORT/DATABASE)"
                .to_string(),
        );
        return out;
    };
    let shown = redact(text);
    let mut add = |message: String| out.push(format!("{message} (in `{shown}`)"));
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        add("contains a space or a control character: percent-encode it".into());
    }
    let rest = match body.rfind('@') {
        Some(at) => {
            let userinfo = &body[..at];
            if userinfo.contains(['/', '?', '#']) {
                add(
                    "the user or password contains `/`, `?` or `#` (or the query an `@`): \
                     percent-encode them (%2F, %3F, %23, %40)"
                        .into(),
                );
            } else if userinfo
                .split(':')
                .any(|part| percent_decode_str(part).decode_utf8().is_err())
            {
                add("the user or password is not percent-encoded UTF-8".into());
            }
            &body[at + 1..]
        }
        None => body,
    };
    if rest.contains('#') {
        add("contains `#`: percent-encode it (%23)".into());
    }
    let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (hostspec, path) = before_query.split_once('/').unwrap_or((before_query, ""));

    let mut has_host = false;
    let mut has_database = false;
    if hostspec.contains(',') {
        add("names several hosts; one host only".into());
    } else {
        let (host, port) = split_host_port(hostspec);
        match host_problem(host) {
            Some(problem) => add(problem),
            None => has_host = !host.is_empty(),
        }
        if let Some(port) = port {
            if let Some(problem) = port_problem(port) {
                add(problem);
            }
        }
    }
    match percent_decode_str(path).decode_utf8() {
        Err(_) => add("the database name is not percent-encoded UTF-8".into()),
        Ok(name) if name.contains('/') => add("the database name contains `/`".into()),
        Ok(name) => has_database = !name.is_empty(),
    }

    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        let key = key.as_ref();
        if IGNORED.contains(&key) {
            add(format!(
                "`{key}` is not read by Gatehouse's PostgreSQL driver"
            ));
            continue;
        }
        let known = PARAMETERS.contains(&key)
            || key
                .strip_prefix("options[")
                .is_some_and(|k| k.ends_with(']'));
        if !known {
            add(format!(
                "`{key}` is not a connection parameter (host, port, dbname, user, password, \
                 sslmode, sslrootcert, sslcert, sslkey, application_name, options)"
            ));
            continue;
        }
        match key {
            "host" if value.is_empty() => add("`host=` is empty".into()),
            "host" => match host_problem(&value) {
                Some(problem) if !value.starts_with('/') => add(problem),
                _ => has_host = true,
            },
            "hostaddr" => match value.parse::<IpAddr>() {
                Ok(_) => has_host = true,
                Err(_) => add("`hostaddr=` is not an IP address".into()),
            },
            "port" => {
                if let Some(problem) = port_problem(&value) {
                    add(problem);
                }
            }
            "dbname" if value.is_empty() => add("`dbname=` is empty".into()),
            "dbname" => has_database = true,
            "sslmode" | "ssl-mode" if !SSL_MODES.contains(&value.as_ref()) => {
                add(format!("`{key}=` must be one of {}", SSL_MODES.join(", ")))
            }
            "statement-cache-capacity" if value.parse::<usize>().is_err() => {
                add("`statement-cache-capacity=` is not a number".into())
            }
            _ => {}
        }
    }
    if !has_host {
        add("no host: postgres://USER@HOST:PORT/DATABASE, or ?host=/socket/directory".into());
    }
    if !has_database {
        add("no database name: add /DATABASE after the host".into());
    }
    out
}

/// `text` with the password masked: `postgres://user:***@host/db?password=***`. Anything that
/// is not a postgres URL is masked whole.
pub fn redact(text: &str) -> String {
    let Some((scheme, body)) = SCHEMES
        .iter()
        .find_map(|s| text.strip_prefix(s).map(|body| (*s, body)))
    else {
        return "[redacted: not a postgres:// URL]".to_string();
    };
    let (user, rest) = match body.rfind('@') {
        Some(at) => {
            let userinfo = &body[..at];
            let user = if userinfo.contains(['/', '?', '#', '&', '=']) {
                "***".to_string()
            } else {
                match userinfo.split_once(':') {
                    Some((user, _)) => format!("{user}:***"),
                    None => userinfo.to_string(),
                }
            };
            (format!("{user}@"), &body[at + 1..])
        }
        None => (String::new(), body),
    };
    let rest = match rest.split_once('?') {
        Some((head, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| {
                    let key = pair.split('=').next().unwrap_or_default();
                    let decoded: String = form_urlencoded::parse(key.as_bytes())
                        .map(|(k, _)| k.into_owned())
                        .collect();
                    if decoded == "password" {
                        format!("{key}=***")
                    } else {
                        pair.to_string()
                    }
                })
                .collect();
            format!("{head}?{}", query.join("&"))
        }
        None => rest.to_string(),
    };
    format!("{scheme}{user}{rest}")
}

/// `HOST[:PORT]` or `[IPV6][:PORT]`; the port is `Some` when a `:` is there.
fn split_host_port(hostspec: &str) -> (&str, Option<&str>) {
    if let Some(inner) = hostspec.strip_prefix('[') {
        return match inner.split_once(']') {
            Some((host, after)) => (
                // Brackets kept, so the check below knows it is an IPv6 literal.
                &hostspec[..host.len() + 2],
                after
                    .strip_prefix(':')
                    .or(if after.is_empty() { None } else { Some(after) }),
            ),
            None => (hostspec, None),
        };
    }
    match hostspec.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (hostspec, None),
    }
}

fn host_problem(host: &str) -> Option<String> {
    if let Some(inner) = host.strip_prefix('[') {
        return match inner.strip_suffix(']').map(str::parse::<Ipv6Addr>) {
            Some(Ok(_)) => None,
            _ => Some("the host in `[...]` is not an IPv6 address".into()),
        };
    }
    let decoded = match percent_decode_str(host).decode_utf8() {
        Ok(decoded) => decoded,
        Err(_) => return Some("the host is not percent-encoded UTF-8".into()),
    };
    if decoded.starts_with('/') {
        return None; // a socket directory
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_');
    if !decoded.chars().all(allowed) {
        return Some(
            "the host is not a host name or an IP address (letters, digits, `-`, `.`)".into(),
        );
    }
    None
}

fn port_problem(port: &str) -> Option<String> {
    match port.parse::<u16>() {
        Ok(p) if p > 0 => None,
        _ if port.is_empty() => Some("a `:` with no port after it".into()),
        _ => Some("the port is not a number from 1 to 65535".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The forms operators write are accepted: with and without a password and port, both
    /// schemes, an IPv6 literal, a socket directory in the host or in `host=`, `dbname=`.
    #[test]
    fn the_usual_url_forms_are_accepted() {
        for url in [
            "postgres://gatehouse@db:5432/gatehouse",
            "postgresql://gatehouse:s3cret@db.internal/gatehouse",
            "postgres://gatehouse:p%40ss%2Fw%3Frd@10.0.0.5:6432/gh?sslmode=verify-full",
            "postgres://u@[::1]:5432/gh",
            "postgres://u@%2Frun%2Fpostgresql/gh",
            "postgres:///gh?host=/run/postgresql",
            "postgres://u@db?dbname=gh&application_name=gatehouse",
            "postgres://u@db/gh?options[statement_timeout]=5s",
        ] {
            assert_eq!(problems(url), Vec::<String>::new(), "{url}");
        }
    }

    /// Each broken shape is refused with its own reason: scheme, host, port, database,
    /// several hosts, an unknown parameter, a bad sslmode, a raw `/` in the password.
    #[test]
    fn each_broken_shape_is_refused_with_its_reason() {
        for (url, reason) in [
            ("mysql://u@db/gh", "must be a URL starting with postgres://"),
            (
                "host=db dbname=gh",
                "must be a URL starting with postgres://",
            ),
            ("postgres://u@/gh", "no host"),
            ("postgres://u@db:0/gh", "the port is not a number"),
            ("postgres://u@db:99999/gh", "the port is not a number"),
            ("postgres://u@db:54x/gh", "the port is not a number"),
            ("postgres://u@db:/gh", "a `:` with no port"),
            ("postgres://u@db/gh?port=abc", "the port is not a number"),
            ("postgres://u@db:5432", "no database name"),
            ("postgres://u@db:5432/", "no database name"),
            ("postgres://u@db1,db2/gh", "several hosts"),
            (
                "postgres://u@db/gh?sslmod=require",
                "`sslmod` is not a connection",
            ),
            ("postgres://u@db/gh?sslmode=on", "`sslmode=` must be one of"),
            ("postgres://u@db/gh?connect_timeout=5", "not read by"),
            ("postgres://u:pa/ss@db/gh", "contains `/`, `?` or `#`"),
            ("postgres://u@d b/gh", "contains a space"),
            ("postgres://u@[::zz]/gh", "not an IPv6 address"),
            ("postgres://u@db!/gh", "not a host name"),
        ] {
            let found = problems(url);
            assert!(
                found.iter().any(|p| p.contains(reason)),
                "{url}: expected `{reason}` in {found:?}"
            );
        }
    }

    /// `redact` masks the password in the user part and in `password=`, and keeps the rest.
    #[test]
    fn redact_masks_the_password_and_keeps_the_rest() {
        assert_eq!(
            redact("postgres://gh:s3cret@db:5432/gh?password=other&sslmode=require"),
            "postgres://gh:***@db:5432/gh?password=***&sslmode=require"
        );
        assert_eq!(redact("postgres://gh@db/gh"), "postgres://gh@db/gh");
        assert_eq!(redact("postgres://db/gh"), "postgres://db/gh");
        assert_eq!(redact("postgres://u:a/b?c@db/gh"), "postgres://***@db/gh");
        assert!(!redact("host=db password=s3cret").contains("s3cret"));
    }

    proptest! {
        /// Whatever the password (raw or percent-encoded, with `@`, `/`, `?`, `#`, `:`, `&`,
        /// spaces) and wherever it sits (user part or `password=`), and whatever else is
        /// wrong with the URL, neither a problem message nor the redacted URL contains it.
        #[test]
        fn no_message_ever_contains_the_password(
            secret in "Zq[a-zA-Z0-9@/?#:&= %._~-]{6,24}",
            encode in any::<bool>(),
            in_query in any::<bool>(),
            host in prop::sample::select(vec!["db", "", "db:0", "db:x", "a,b", "[::1]"]),
            path in prop::sample::select(vec!["/gh", "", "/"]),
            scheme in prop::sample::select(vec!["postgres://", "postgresql://", "pg://"]),
        ) {
            let written = if encode {
                percent_encoding::utf8_percent_encode(&secret, percent_encoding::NON_ALPHANUMERIC)
                    .to_string()
            } else {
                secret.clone()
            };
            let url = if in_query {
                format!("{scheme}gh@{host}{path}?password={written}")
            } else {
                format!("{scheme}gh:{written}@{host}{path}")
            };
            let redacted = redact(&url);
            prop_assert!(!redacted.contains(&secret), "{redacted}");
            prop_assert!(!redacted.contains(&written), "{redacted}");
            for message in problems(&url) {
                prop_assert!(!message.contains(&secret), "{message}");
                prop_assert!(!message.contains(&written), "{message}");
            }
        }
    }
}
