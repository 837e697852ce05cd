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
    pub kind: &'static str,
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
        kind = line.kind,
        upstream = line.upstream.unwrap_or("-"),
        client = %line.client.map_or_else(|| "-".to_string(), |ip| ip.to_string()),
        request_id = line.request_id,
        user = line.user.unwrap_or("-"),
        error = line.error.unwrap_or("-"),
    );
}

/// The longest text [`Escaped`] writes; the rest is counted, not shown.
pub const MAX_LOGGED: usize = 1024;

/// Whether a character is a bidirectional control (it can make text read differently from
/// what it is: `U+202E` turns `nimda` into what looks like `admin`).
pub fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200E}' | '\u{200F}' | '\u{061C}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Shows a value that came from a request or an IdP safely in a log line: control
/// characters (CR, LF, ESC, NUL, ...), bidi controls and `\\` are written as escapes
/// (`\\r`, `\\u{1b}`), and text beyond [`MAX_LOGGED`] bytes is cut with a count. Use as
/// `field = %Escaped(&value)`; a bare `%value` writes it raw into text logs.
pub struct Escaped<T>(pub T);

impl<T: fmt::Display> fmt::Display for Escaped<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.0.to_string();
        let mut written = 0;
        for (i, c) in text.char_indices() {
            if written >= MAX_LOGGED {
                return write!(f, "...({} more bytes)", text.len() - i);
            }
            if c.is_control() || is_bidi_control(c) || c == '\\' {
                for e in c.escape_default() {
                    fmt::Write::write_char(f, e)?;
                    written += 1;
                }
            } else {
                fmt::Write::write_char(f, c)?;
                written += c.len_utf8();
            }
        }
        Ok(())
    }
}

impl<T: fmt::Display> fmt::Debug for Escaped<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

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

    #[test]
    fn escaped_values_hold_no_raw_control_characters_and_are_capped() {
        let shown = Escaped("a\r\nb\u{1b}[31m\u{0}\u{202E}\\n").to_string();
        assert_eq!(shown, "a\\r\\nb\\u{1b}[31m\\u{0}\\u{202e}\\\\n");
        let long = Escaped("x".repeat(5000)).to_string();
        assert!(
            long.len() < MAX_LOGGED + 40 && long.ends_with("(3976 more bytes)"),
            "{long}"
        );
    }

    mod hostile {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(3000))]

            /// Whatever the input, the escaped form is one line with no control character.
            #[test]
            fn escaped_text_is_one_clean_line(text in any::<String>()) {
                let shown = Escaped(&text).to_string();
                prop_assert!(!shown.chars().any(|c| c.is_control()), "{:?}", shown);
                prop_assert!(shown.len() <= MAX_LOGGED + 40);
            }
        }
    }
}
