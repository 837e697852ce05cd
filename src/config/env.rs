//! Overrides from the environment, for containers: `GATEHOUSE__SECTION__KEY=value` sets the
//! key `section.key` of the TOML document before it is read, so an override goes through the
//! same checks as the file. A double underscore separates path segments, which are lowercased
//! (`GATEHOUSE__SESSION__COOKIE_SECURE` is `session.cookie_secure`); a number indexes an array
//! of tables (`GATEHOUSE__CONNECTIONS__0__CLIENT_SECRET`), and the next index appends an entry.
//! The value is read as a TOML value when it is one (`true`, `8080`, `["0.0.0.0:8080"]`,
//! `"quoted"`), else taken as a string (`2h`, `s3cret`).

use super::ConfigError;

/// The prefix of an override variable's name.
pub const PREFIX: &str = "GATEHOUSE__";

/// One override that was applied: the variable and the key path it set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    pub var: String,
    /// In the form config errors use: `session.lifetime`, `connections[0].client_secret`.
    pub path: String,
}

/// Applies every `GATEHOUSE__...` variable of `vars` (others are ignored), in name order.
/// Returns the overrides applied and a problem for each variable that names no settable key.
pub fn apply(
    doc: &mut toml::Value,
    vars: impl IntoIterator<Item = (String, String)>,
) -> (Vec<Override>, Vec<ConfigError>) {
    let mut vars: Vec<(String, String)> = vars
        .into_iter()
        .filter(|(name, _)| name.starts_with(PREFIX))
        .collect();
    vars.sort();
    let mut applied = Vec::new();
    let mut errors = Vec::new();
    for (var, raw) in vars {
        let segments: Vec<String> = var[PREFIX.len()..]
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect();
        let mut path = String::new();
        let result = if segments.iter().any(String::is_empty) {
            Err("an empty key segment (use GATEHOUSE__SECTION__KEY)".to_string())
        } else {
            set(doc, &segments, value_of(&raw), &mut path)
        };
        match result {
            Ok(()) => applied.push(Override { var, path }),
            Err(message) => errors.push(ConfigError {
                path: if path.is_empty() { var.clone() } else { path },
                message: format!("{message} (set by the environment variable {var})"),
            }),
        }
    }
    (applied, errors)
}

/// Adds to each problem at (or under) an overridden key the variable that set it.
pub fn annotate(errors: &mut [ConfigError], overrides: &[Override]) {
    for error in errors {
        let set_by = overrides.iter().find(|o| {
            error.path == o.path
                || error.path.starts_with(&format!("{}.", o.path))
                || error.path.starts_with(&format!("{}[", o.path))
        });
        if let Some(o) = set_by {
            if !error.message.contains(&o.var) {
                error.message = format!(
                    "{} (set by the environment variable {})",
                    error.message, o.var
                );
            }
        }
    }
}

/// The value as TOML when it is a single TOML value, else as a string.
fn value_of(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .filter(|t| t.len() == 1)
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

/// Sets `value` at `segments` below `node`, creating tables (and arrays, before an index) on
/// the way; `path` grows to the key path reached, for the messages.
fn set(
    node: &mut toml::Value,
    segments: &[String],
    value: toml::Value,
    path: &mut String,
) -> Result<(), String> {
    let Some((segment, rest)) = segments.split_first() else {
        return Err("no key named".into());
    };
    let fresh = |rest: &[String]| match rest.first() {
        Some(next) if next.parse::<usize>().is_ok() => toml::Value::Array(Vec::new()),
        _ => toml::Value::Table(toml::Table::new()),
    };
    match node {
        toml::Value::Table(table) => {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(segment);
            if rest.is_empty() {
                table.insert(segment.clone(), value);
                return Ok(());
            }
            let child = table.entry(segment.clone()).or_insert_with(|| fresh(rest));
            set(child, rest, value, path)
        }
        toml::Value::Array(array) => {
            let index: usize = segment
                .parse()
                .map_err(|_| format!("`{segment}` is not an index into the array {path}"))?;
            if index > array.len() {
                return Err(format!(
                    "{path} has {} entries: the index can be at most {}",
                    array.len(),
                    array.len()
                ));
            }
            path.push_str(&format!("[{index}]"));
            if rest.is_empty() {
                if index == array.len() {
                    array.push(value);
                } else {
                    array[index] = value;
                }
                return Ok(());
            }
            if index == array.len() {
                array.push(fresh(rest));
            }
            set(&mut array[index], rest, value, path)
        }
        other => Err(format!("{path} is a {}, not a table", other.type_str())),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::parse_with_env;

    const FILE: &str = "[session]\nlifetime = \"8h\"\ncookie_secure = false\n\
        [[upstreams]]\nurl = \"http://127.0.0.1:8080\"\n\
        [[connections]]\nid = \"c\"\nissuer = \"https://idp.example\"\nclient_id = \"g\"\n\
        client_secret = \"from-file\"\n";

    fn with(vars: &[(&str, &str)]) -> Result<crate::config::Config, crate::config::ConfigErrors> {
        parse_with_env(
            FILE,
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    /// A variable replaces the file's value, and its value is read like the file's
    /// (a duration string here, `1h30m` included).
    #[test]
    fn an_environment_variable_overrides_the_file() {
        let c = with(&[("GATEHOUSE__SESSION__LIFETIME", "1h30m")]).unwrap();
        assert_eq!(c.session.lifetime, Duration::from_secs(5400));
        let c = with(&[]).unwrap();
        assert_eq!(c.session.lifetime, Duration::from_secs(8 * 3600));
    }

    /// The PostgreSQL store can be chosen from the environment alone: `GATEHOUSE__STORE__URL`
    /// is read as a string (it is no TOML value), `POOL_SIZE` as a number; a bad URL set so is
    /// reported under `store.url`, naming the variable and never the password.
    #[test]
    fn the_store_url_and_backend_can_come_from_the_environment() {
        use crate::config::model::StoreBackend;
        let c = with(&[
            ("GATEHOUSE__STORE__BACKEND", "postgres"),
            (
                "GATEHOUSE__STORE__URL",
                "postgres://gh:pw@db:5432/gatehouse",
            ),
            ("GATEHOUSE__STORE__POOL_SIZE", "8"),
        ])
        .unwrap();
        let StoreBackend::Postgres(pg) = c.store_backend else {
            panic!("not postgres");
        };
        assert_eq!(pg.url.0, "postgres://gh:pw@db:5432/gatehouse");
        assert_eq!(pg.pool_size, 8);
        let errors = with(&[
            ("GATEHOUSE__STORE__BACKEND", "postgres"),
            (
                "GATEHOUSE__STORE__URL",
                "postgres://gh:hunter22secret@db:5432",
            ),
        ])
        .unwrap_err()
        .to_string();
        assert!(errors.starts_with("store.url: "), "{errors}");
        assert!(errors.contains("GATEHOUSE__STORE__URL"), "{errors}");
        assert!(!errors.contains("hunter22secret"), "{errors}");
    }

    /// A value that is TOML is read as TOML (an array, a boolean), anything else as a string;
    /// missing tables are created and a number indexes an array of tables.
    #[test]
    fn values_are_toml_when_they_parse_and_paths_reach_into_arrays() {
        let c = with(&[
            (
                "GATEHOUSE__SERVER__LISTEN",
                "[\"0.0.0.0:8080\", \"127.0.0.1:9000\"]",
            ),
            ("GATEHOUSE__SESSION__COOKIE_SECURE", "true"),
            (
                "GATEHOUSE__CONNECTIONS__0__CLIENT_SECRET",
                "s3cret from env",
            ),
            ("GATEHOUSE__LOGIN__EXTERNAL_URL", "https://app.example.com"),
        ])
        .unwrap();
        assert_eq!(c.server.listen.len(), 2);
        assert_eq!(c.server.listen[0].to_string(), "0.0.0.0:8080");
        assert!(c.session.cookie_secure);
        assert_eq!(c.connections[0].client_secret.0, "s3cret from env");
        assert_eq!(
            c.login.external_url.as_deref(),
            Some("https://app.example.com")
        );
        // The next index appends an entry.
        let c = with(&[
            ("GATEHOUSE__UPSTREAMS__1__URL", "http://127.0.0.1:9090"),
            ("GATEHOUSE__UPSTREAMS__1__PATH_PREFIX", "/api"),
        ])
        .unwrap();
        assert_eq!(c.upstreams.len(), 2);
        assert_eq!(c.upstreams[1].path_prefix, "/api");
    }

    /// Variables without the double-underscore prefix are not config.
    #[test]
    fn other_variables_are_ignored() {
        let c = with(&[
            ("GATEHOUSE_CONFIG", "/etc/x.toml"),
            ("GATEHOUSE_SESSION__LIFETIME", "1m"),
            ("PATH", "/bin"),
        ])
        .unwrap();
        assert_eq!(c.session.lifetime, Duration::from_secs(8 * 3600));
    }

    /// A bad value, an unknown key, a misplaced index or an empty segment set from the
    /// environment is reported at its key path and names the variable.
    #[test]
    fn a_problem_from_the_environment_names_the_key_and_the_variable() {
        let cases = [
            (
                "GATEHOUSE__SESSION__LIFETIME",
                "forever",
                "session.lifetime",
            ),
            ("GATEHOUSE__SESSION__LIFETME", "1h", "session.lifetme"),
            ("GATEHOUSE__SERVER__LISTEN", "8080", "server.listen"),
            ("GATEHOUSE__UPSTREAMS__5__URL", "http://x", "upstreams"),
            ("GATEHOUSE__SESSION__LIFETIME__X", "1", "session.lifetime"),
            (
                "GATEHOUSE__SESSION____LIFETIME",
                "1h",
                "GATEHOUSE__SESSION____LIFETIME",
            ),
        ];
        for (var, value, path) in cases {
            let errors = with(&[(var, value)]).expect_err(var).0;
            let error = errors
                .iter()
                .find(|e| e.path == path)
                .unwrap_or_else(|| panic!("{var}: no problem at {path}: {errors:?}"));
            assert!(
                error
                    .message
                    .contains(&format!("set by the environment variable {var}")),
                "{var}: {error}"
            );
        }
    }
}
