//! Logs: `tracing` set up as text or JSON, the access line written once per request, and a
//! `Debug` wrapper that hides credentials when headers are logged.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use http::HeaderMap;
use tracing_subscriber::EnvFilter;

use crate::config::model::{Log, LogFormat};

/// Sets up the global subscriber. pingora logs through `log`; those records are bridged.
pub fn init(log: &Log) {
    // pingora is chatty at info about its own lifecycle; keep it at warn unless asked.
    let directives = if log.level.contains("pingora") {
        log.level.clone()
    } else {
        format!(
            "{},pingora=warn,pingora_core=warn,pingora_proxy=warn",
            log.level
        )
    };
    let filter = EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let result = match log.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    if let Err(e) = result {
        eprintln!("logging was already set up: {e}");
    }
}

/// One request, as the access log tells it.
pub struct AccessLine<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub elapsed: Duration,
    pub kind: crate::metrics::RouteKind,
    pub upstream: Option<&'a str>,
    pub client: Option<IpAddr>,
    pub request_id: &'a str,
    pub user: Option<&'a str>,
    pub error: Option<&'static str>,
}

/// Writes the access line (target `gatehouse::access`). The path is the normalized path,
/// without the query, which can carry secrets.
pub fn access_line(line: &AccessLine<'_>) {
    tracing::info!(
        target: "gatehouse::access",
        method = line.method,
        path = line.path,
        status = line.status,
        duration_ms = line.elapsed.as_secs_f64() * 1000.0,
        kind = line.kind.as_str(),
        upstream = line.upstream.unwrap_or("-"),
        client = %OrDash(line.client),
        request_id = line.request_id,
        user = line.user.unwrap_or("-"),
        error = line.error.unwrap_or("-"),
    );
}

/// A value shown as itself, or `-` when absent, formatted in place (no `String` per line).
struct OrDash<T>(Option<T>);

impl<T: fmt::Display> fmt::Display for OrDash<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(value) => value.fmt(f),
            None => f.write_str("-"),
        }
    }
}

pub use crate::text::Escaped;

/// Headers whose values never reach a log.
const SECRET_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
];

/// Shows headers in `Debug` output with credential values replaced by `[redacted]`.
pub struct Redacted<'a>(pub &'a HeaderMap);

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (name, value) in self.0 {
            if SECRET_HEADERS.contains(&name.as_str()) {
                map.entry(&name.as_str(), &"[redacted]");
            } else {
                map.entry(&name.as_str(), &String::from_utf8_lossy(value.as_bytes()));
            }
        }
        map.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_redacted_and_other_headers_shown() {
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer secret-token".parse().unwrap());
        h.insert("cookie", "_gatehouse=sealed".parse().unwrap());
        h.insert("accept", "text/html".parse().unwrap());
        let shown = format!("{:?}", Redacted(&h));
        assert!(
            !shown.contains("secret-token") && !shown.contains("sealed"),
            "{shown}"
        );
        assert!(shown.contains("text/html"));
        assert_eq!(shown.matches("[redacted]").count(), 2);
    }
}
