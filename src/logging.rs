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
    use tracing_subscriber::prelude::*;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter_for(log));
    let lines = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter);
    let result = match log.format {
        LogFormat::Json => {
            tracing::subscriber::set_global_default(registry.with(lines.json().flatten_event(true)))
        }
        LogFormat::Text => tracing::subscriber::set_global_default(registry.with(lines)),
    };
    match result {
        Ok(()) => {
            let setter: LevelSetter =
                Box::new(move |filter| handle.reload(filter).map_err(|e| e.to_string()));
            let _ = LEVEL.set(setter);
            if log::set_boxed_logger(Box::new(PingoraLog(tracing_log::LogTracer::new()))).is_ok() {
                follow_level();
            }
        }
        Err(e) => eprintln!("logging was already set up: {e}"),
    }
}

/// pingora logs through the `log` crate: [`init`] installs this bridge, which passes its
/// records on as `tracing` events, except one that reports no fault (see
/// [`is_lost_pooled_connection`]): that one is counted
/// (`gatehouse_upstream_pooled_connections_lost_total`) and written at debug, not as an ERROR
/// line on every occurrence under load.
struct PingoraLog(tracing_log::LogTracer);

impl log::Log for PingoraLog {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        log::Log::enabled(&self.0, metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        if is_lost_pooled_connection(record) {
            crate::metrics::Metrics::pooled_connection_lost();
            tracing::debug!(
                target: "gatehouse::upstream",
                "a pooled upstream connection was handed between worker threads before its \
                 idle watcher let go; a new connection is opened instead (cloudflare/pingora#998)"
            );
            return;
        }
        log::Log::log(&self.0, record);
    }

    fn flush(&self) {
        log::Log::flush(&self.0);
    }
}

/// pingora 0.9's "failed to acquire reusable stream": a race between two worker threads over
/// an idle upstream connection (cloudflare/pingora#998). The request is served on a new
/// connection and nothing is lost, so it is not an error an operator can act on.
fn is_lost_pooled_connection(record: &log::Record<'_>) -> bool {
    record.target().starts_with("pingora_core::connectors")
        && record.args().as_str() == Some("failed to acquire reusable stream")
}

/// `log`'s own level gate follows the subscriber's, so pingora's debug records cost nothing
/// unless a level asks for them.
fn follow_level() {
    use tracing_log::AsLog;
    log::set_max_level(tracing::level_filters::LevelFilter::current().as_log());
}

/// Changes the level filter of the running process (a config reload of `[log] level`).
pub fn set_level(log: &Log) {
    match LEVEL.get() {
        Some(set) => match set(filter_for(log)) {
            Ok(()) => {
                follow_level();
                tracing::info!(level = %log.level, "log level changed");
            }
            Err(e) => tracing::warn!(error = %e, "the log level could not be changed"),
        },
        None => tracing::debug!("logging is not set up by Gatehouse: the level stays"),
    }
}

type LevelSetter = Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;

/// Sets the filter of the subscriber [`init`] installed.
static LEVEL: std::sync::OnceLock<LevelSetter> = std::sync::OnceLock::new();

/// The filter for `[log] level`. pingora is chatty at info about its own lifecycle; it stays
/// at warn unless the level names it.
fn filter_for(log: &Log) -> EnvFilter {
    let directives = if log.level.contains("pingora") {
        log.level.clone()
    } else {
        format!(
            "{},pingora=warn,pingora_core=warn,pingora_proxy=warn",
            log.level
        )
    };
    EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info"))
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
    /// The W3C trace id (`traceparent`) the upstream got, so an app's logs join up.
    pub trace_id: &'a str,
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
        trace_id = if line.trace_id.is_empty() { "-" } else { line.trace_id },
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

    fn record_is_lost_connection(target: &str, args: std::fmt::Arguments<'_>) -> bool {
        is_lost_pooled_connection(
            &log::Record::builder()
                .target(target)
                .level(log::Level::Error)
                .args(args)
                .build(),
        )
    }

    /// The lost-reuse record is counted in `gatehouse_upstream_pooled_connections_lost_total`
    /// (once per record), and another pingora record is not.
    #[test]
    fn a_lost_pooled_connection_is_counted() {
        let metrics = crate::metrics::Metrics::new().unwrap();
        let count = || {
            let text = String::from_utf8(metrics.render()).unwrap();
            text.lines()
                .find_map(|l| l.strip_prefix("gatehouse_upstream_pooled_connections_lost_total "))
                .map_or(-1.0, |v| v.trim().parse::<f64>().unwrap())
        };
        let bridge = PingoraLog(tracing_log::LogTracer::new());
        let before = count();
        assert!(before >= 0.0, "the counter is exported");
        for message in [
            format_args!("failed to acquire reusable stream"),
            format_args!("Unexpected data read in idle connection"),
        ] {
            log::Log::log(
                &bridge,
                &log::Record::builder()
                    .target("pingora_core::connectors")
                    .level(log::Level::Error)
                    .args(message)
                    .build(),
            );
        }
        assert_eq!(count(), before + 1.0);
    }

    /// Only pingora's lost-reuse message is taken off the ERROR lines; any other record of
    /// pingora's connectors, or the same words from elsewhere, still goes through as it is.
    #[test]
    fn only_the_lost_pooled_connection_record_is_quieted() {
        assert!(record_is_lost_connection(
            "pingora_core::connectors",
            format_args!("failed to acquire reusable stream")
        ));
        let n = 3;
        for (target, args) in [
            (
                "pingora_core::connectors",
                format_args!("Unexpected data read in idle connection"),
            ),
            (
                "pingora_core::connectors",
                format_args!("failed to acquire reusable stream {n}"),
            ),
            (
                "pingora_proxy",
                format_args!("failed to acquire reusable stream"),
            ),
            (
                "gatehouse",
                format_args!("failed to acquire reusable stream"),
            ),
        ] {
            assert!(!record_is_lost_connection(target, args), "{target}: {args}");
        }
    }

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
