//! Configuration, in two layers: [`file`] mirrors the TOML and rejects unknown keys;
//! [`validate`] checks it whole and builds the [`model`] that the rest of the crate uses.

pub mod duration;
pub mod env;
pub mod file;
pub mod lint;
pub mod model;
pub mod postgres_url;
pub mod validate;

use std::fmt;
use std::path::Path;

pub use model::Config;

/// One problem in a config file, with the key path it sits at (`upstreams[0].url`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem found in one config file.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Reads, parses and validates the config file at `path`, with the process environment's
/// `GATEHOUSE__SECTION__KEY` overrides applied (see [`env`]).
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            path: "(file)".into(),
            message: format!("cannot read {}: {e}", path.display()),
        }])
    })?;
    let vars = std::env::vars_os()
        .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)));
    parse_with_env(&text, vars)
}

/// Parses and validates config text.
pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
    parse_with_env(text, std::iter::empty())
}

/// [`parse`] with environment overrides (name, value) applied to the TOML document before
/// it is read: a problem at an overridden key says which variable set it.
pub fn parse_with_env(
    text: &str,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigErrors> {
    let mut value: toml::Value = toml::from_str(text).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            path: "(syntax)".into(),
            message: e.to_string().trim().replace('\n', " "),
        }])
    })?;
    let (overrides, mut env_errors) = env::apply(&mut value, vars);
    match parse_value(value) {
        Ok(config) if env_errors.is_empty() => Ok(config),
        Ok(_) => Err(ConfigErrors(env_errors)),
        Err(mut errors) => {
            env::annotate(&mut errors.0, &overrides);
            env_errors.extend(errors.0);
            Err(ConfigErrors(env_errors))
        }
    }
}

fn parse_value(value: toml::Value) -> Result<Config, ConfigErrors> {
    let (file, mut errors) = parse_file(value);
    // The file with its bad keys removed is still validated, so the list is complete.
    match file.map(validate::validate) {
        Some(Ok(config)) if errors.is_empty() => Ok(config),
        Some(Err(more)) => {
            errors.extend(more.0);
            Err(ConfigErrors(errors))
        }
        _ => Err(ConfigErrors(errors)),
    }
}

/// The TOML document to [`file::FileConfig`], reporting every unknown key and type error, not only the
/// first: after each serde error the offending key is removed and the parse is tried again.
/// Returns the file as far as it could be read, and the problems met on the way.
fn parse_file(mut value: toml::Value) -> (Option<file::FileConfig>, Vec<ConfigError>) {
    let mut errors = Vec::new();
    // Each round removes one key, so the loop ends; the bound is a belt over the braces.
    for _ in 0..256 {
        match serde_path_to_error::deserialize::<_, file::FileConfig>(value.clone()) {
            Ok(parsed) => return (Some(parsed), errors),
            Err(e) => {
                let path = e.path().to_string();
                let message = e.into_inner().to_string();
                let removable =
                    !message.starts_with("missing field") && remove_at(&mut value, &path);
                errors.push(ConfigError { path, message });
                if !removable {
                    break;
                }
            }
        }
    }
    (None, errors)
}

/// Removes the key at a serde path such as `upstreams[1].url` from a TOML value.
fn remove_at(value: &mut toml::Value, path: &str) -> bool {
    let mut steps: Vec<&str> = Vec::new();
    for part in path.split('.') {
        match part.split_once('[') {
            Some((name, rest)) => {
                steps.push(name);
                steps.extend(rest.split('[').map(|s| s.trim_end_matches(']')));
            }
            None => steps.push(part),
        }
    }
    let Some((last, parents)) = steps.split_last() else {
        return false;
    };
    let mut at = value;
    for step in parents {
        at = match at {
            toml::Value::Table(t) => match t.get_mut(*step) {
                Some(v) => v,
                None => return false,
            },
            toml::Value::Array(a) => match step.parse::<usize>().ok().and_then(|i| a.get_mut(i)) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    match at {
        toml::Value::Table(t) => t.remove(*last).is_some(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[[upstreams]]\nurl = \"http://127.0.0.1:8080\"\n";

    #[test]
    fn a_minimal_file_gets_every_default() {
        let c = parse(MINIMAL).expect("valid");
        assert_eq!(c.server.listen[0].to_string(), file::DEFAULT_LISTEN);
        assert_eq!(
            c.server.admin_listen.to_string(),
            file::DEFAULT_ADMIN_LISTEN
        );
        assert_eq!(c.headers.user.as_str(), "x-auth-request-user");
        assert_eq!(c.upstreams[0].path_prefix, "/");
        assert_eq!(c.upstreams[0].id, "upstream-0");
    }

    /// A secure cookie without a domain on path `/` gets the `__Host-` prefix (the browser
    /// then refuses it from a sibling subdomain or over http); any of the other settings, or
    /// `cookie_host_prefix = false`, keeps the plain name.
    #[test]
    fn the_session_cookie_gets_the_host_prefix_only_where_browsers_accept_it() {
        let name = |session: &str| {
            let c = parse(&format!("{MINIMAL}[session]\n{session}")).expect("valid");
            (c.session.cookie_name, c.session.host_prefix)
        };
        assert_eq!(name(""), ("__Host-_gatehouse".to_string(), true));
        assert_eq!(
            name("cookie_name = \"sid\""),
            ("__Host-sid".to_string(), true)
        );
        for plain in [
            "cookie_secure = false",
            "cookie_domain = \"example.com\"",
            "cookie_path = \"/app\"",
            "cookie_host_prefix = false",
        ] {
            assert_eq!(name(plain), ("_gatehouse".to_string(), false), "{plain}");
        }
    }

    #[test]
    fn every_unknown_key_and_bad_value_is_listed_with_its_path() {
        let text = r#"
            [server]
            lisen = "x"
            admin_listen = "nowhere"
            [log]
            colour = true
            [[upstreams]]
            url = "ftp://x"
            timeout = 3
            [[public]]
            path = "/a/../b"
            match = "glob"
        "#;
        let errors = parse(text).expect_err("invalid").0;
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        for expected in [
            "server.lisen",
            "log.colour",
            "upstreams[0].timeout",
            "server.admin_listen",
            "upstreams[0].url",
            "public[0].match",
        ] {
            assert!(
                paths.contains(&expected),
                "{expected} missing from {paths:?}"
            );
        }
    }

    #[test]
    fn a_missing_required_key_is_named() {
        let errors = parse("[[upstreams]]\nhost = \"a.example\"\n")
            .expect_err("invalid")
            .0;
        assert!(
            errors[0].message.contains("missing field `url`"),
            "{errors:?}"
        );
        assert_eq!(errors[0].path, "upstreams[0]");
    }

    #[test]
    fn a_wrong_type_is_named_with_its_path() {
        let text = format!("{MINIMAL}preserve_host = \"yes\"\n");
        let errors = parse(&text).expect_err("invalid").0;
        assert_eq!(errors[0].path, "upstreams[0].preserve_host");
    }

    #[test]
    fn public_rule_paths_must_already_be_normalized() {
        let text = format!("{MINIMAL}[[public]]\npath = \"/a//b\"\n");
        let errors = parse(&text).expect_err("invalid").0;
        assert_eq!(errors[0].path, "public[0].path");
        assert!(errors[0].message.contains("/a/b"));
    }

    #[test]
    fn lower_case_methods_in_rules_are_read_as_upper_case() {
        let text = format!("{MINIMAL}[[public]]\npath = \"/a\"\nmethods = [\"get\"]\n");
        let c = parse(&text).expect("valid");
        assert_eq!(c.public[0].methods, vec![http::Method::GET]);
    }

    #[test]
    fn wildcard_hosts_become_suffixes() {
        let text = "[[upstreams]]\nhost = \"*.Example.com\"\nurl = \"http://127.0.0.1:1\"\n";
        let c = parse(text).expect("valid");
        assert_eq!(
            c.upstreams[0].host,
            Some(model::HostMatch::Suffix(".example.com".into()))
        );
    }
}
