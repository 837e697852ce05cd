//! Path normalization: the one form of a request path that is forwarded upstream, and the form
//! rules are matched against, so what was checked is what every common backend serves.
//!
//! - `%XX` of an unreserved character (`A-Z a-z 0-9 - . _ ~`) is decoded; other escapes are
//!   kept, with upper-case hex.
//! - `.` and `..` segments are resolved, `//` is collapsed.
//! - Path parameters (`;...` in a segment, as Tomcat and Jetty read them) are forwarded as sent,
//!   but rules match the [`NormalPath::match_form`], where each segment has its parameters
//!   removed: `/admin;x/users` matches as `/admin/users`.
//! - Refused: an encoded `/`, `\` or `;` (`%2f`, `%5c`, `%3b`), a raw `\`, NUL (raw or `%00`),
//!   a broken escape, escapes that do not decode to valid UTF-8 (overlong dots `%c0%ae`,
//!   surrogates, lone continuation bytes), a dot segment with parameters (`..;x`, `.;x`), a
//!   double-encoded `.`, `/`, `\`, `%`, `;`, unreserved or control character (`%252e`; opt out
//!   with `[server] reject_double_encoding = false`), a path that does not start with `/`,
//!   and any `..` that climbs above `/`.

use std::fmt;

/// Why a path was refused (each gives 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path must start with /")]
    NotAbsolute,
    #[error("encoded slash or backslash in a path segment")]
    EncodedSeparator,
    #[error("encoded semicolon in a path segment")]
    EncodedSemicolon,
    #[error("backslash in path")]
    Backslash,
    #[error("NUL byte in path")]
    Nul,
    #[error("malformed percent escape")]
    BadEscape,
    #[error("percent escapes that are not valid UTF-8")]
    BadUtf8,
    #[error("double-encoded character in path")]
    DoubleEncoded,
    #[error("dot segment with path parameters")]
    DotSegmentParams,
    #[error("path climbs above /")]
    AboveRoot,
    #[error("path is not ASCII")]
    NotAscii,
    #[error("fragment in request path")]
    Fragment,
}

/// How strict [`normalize_with`] is where config chooses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathOptions {
    /// Refuse `%25` followed by the escape of a character that changes what a path means when
    /// an app decodes twice (`[server] reject_double_encoding`, default true).
    pub reject_double_encoding: bool,
}

impl Default for PathOptions {
    fn default() -> Self {
        Self {
            reject_double_encoding: true,
        }
    }
}

/// A normalized path: the form that is forwarded and the form rules match, derived once.
#[derive(Clone, PartialEq, Eq)]
pub struct NormalPath {
    forwarded: String,
    /// The form with path parameters removed; `None` when it is the forwarded form.
    matched: Option<String>,
}

impl NormalPath {
    /// The path as it goes upstream (path parameters kept).
    pub fn as_str(&self) -> &str {
        &self.forwarded
    }

    /// The path every rule, route and upstream is matched against: each segment without its
    /// `;...` parameters, empty segments left by that collapsed.
    pub fn match_form(&self) -> &str {
        self.matched.as_deref().unwrap_or(&self.forwarded)
    }

    /// Whether the path carries `;` parameters (its two forms differ).
    pub fn has_parameters(&self) -> bool {
        self.matched.is_some()
    }
}

impl fmt::Debug for NormalPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.forwarded.fmt(f)
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The byte of the escape whose two hex digits start at `i`, if they are hex digits.
fn escaped(bytes: &[u8], i: usize) -> Option<u8> {
    let hi = bytes.get(i).copied().and_then(hex)?;
    let lo = bytes.get(i + 1).copied().and_then(hex)?;
    Some(hi << 4 | lo)
}

/// Whether a second decoding of `%XX` giving `b` would change how a path is matched.
fn dangerous_when_decoded_twice(b: u8) -> bool {
    is_unreserved(b) || matches!(b, b'/' | b'\\' | b'%' | b';') || b.is_ascii_control()
}

/// Decodes unreserved escapes of one raw path (no query) and checks for refused bytes.
fn decode(raw: &str, options: PathOptions, out: &mut String) -> Result<(), PathError> {
    let bytes = raw.as_bytes();
    // Every escape decoded once, to check that they spell valid UTF-8.
    let mut once: Vec<u8> = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let decoded = escaped(bytes, i + 1).ok_or(PathError::BadEscape)?;
                match decoded {
                    b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                    b';' => return Err(PathError::EncodedSemicolon),
                    0 => return Err(PathError::Nul),
                    d if is_unreserved(d) => out.push(d as char),
                    d => {
                        out.push('%');
                        out.push_str(&format!("{d:02X}"));
                    }
                }
                once.push(decoded);
                i += 3;
            }
            b'\\' => return Err(PathError::Backslash),
            b'#' => return Err(PathError::Fragment),
            0 => return Err(PathError::Nul),
            b if !b.is_ascii() => return Err(PathError::NotAscii),
            b => {
                out.push(b as char);
                once.push(b);
                i += 1;
            }
        }
    }
    std::str::from_utf8(&once).map_err(|_| PathError::BadUtf8)?;
    if options.reject_double_encoding && double_encoded(out.as_bytes()) {
        return Err(PathError::DoubleEncoded);
    }
    Ok(())
}

/// Whether a decoded path holds `%25` and then two hex digits a second decoding would turn
/// into a character that changes matching. Checked on the decoded form, so `%25%32%65`
/// (which decodes to `%252e`) is caught like `%252e`.
fn double_encoded(decoded: &[u8]) -> bool {
    decoded.windows(3).enumerate().any(|(i, w)| {
        w == b"%25" && escaped(decoded, i + 3).is_some_and(dangerous_when_decoded_twice)
    })
}

/// Whether `raw` is already in normal form: no escapes, no dot segments, no empty segments,
/// no path parameters and no refused bytes. Most real paths are, and then normalizing is a
/// single copy.
fn already_normal(raw: &str) -> bool {
    let bytes = raw.as_bytes();
    let mut previous = b'/';
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'%' | b'\\' | b'#' | b';' | 0 => return false,
            b'/' if previous == b'/' && i > 0 => return false,
            b'.' if previous == b'/' => {
                // "/." starts a dot segment when followed by "/", ".", or the end
                match bytes.get(i + 1) {
                    None | Some(b'/') | Some(b'.') => return false,
                    _ => {}
                }
            }
            b if !b.is_ascii() => return false,
            _ => {}
        }
        previous = b;
    }
    true
}

/// A segment's name: the part before its first `;`.
fn segment_name(segment: &str) -> &str {
    segment.split_once(';').map_or(segment, |(name, _)| name)
}

/// The match form of a normalized path that holds a `;`: each segment's parameters removed,
/// the empty segments that leaves collapsed, a trailing slash kept.
fn strip_parameters(forwarded: &str) -> String {
    let mut out = String::with_capacity(forwarded.len());
    let mut trailing = forwarded.ends_with('/');
    for segment in forwarded.split('/').skip(1) {
        let name = segment_name(segment);
        if name.is_empty() {
            trailing = true;
            continue;
        }
        out.push('/');
        out.push_str(name);
        trailing = forwarded.ends_with('/');
    }
    if out.is_empty() || trailing {
        out.push('/');
    }
    out
}

/// Normalizes a raw request path (without its query) with the default (strict) options.
pub fn normalize(raw: &str) -> Result<NormalPath, PathError> {
    normalize_with(raw, PathOptions::default())
}

/// Normalizes a raw request path (without its query). See the module docs for the rules.
pub fn normalize_with(raw: &str, options: PathOptions) -> Result<NormalPath, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if already_normal(raw) {
        return Ok(NormalPath {
            forwarded: raw.to_string(),
            matched: None,
        });
    }
    let mut decoded = String::with_capacity(raw.len());
    decode(raw, options, &mut decoded)?;

    let ends_with_slash = decoded.ends_with('/');
    let mut segments: Vec<&str> = Vec::with_capacity(8);
    let mut trailing = ends_with_slash;
    for segment in decoded.split('/') {
        match segment {
            "" => {}
            "." => trailing = true,
            ".." => {
                if segments.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                trailing = true;
            }
            s if matches!(segment_name(s), "." | "..") => return Err(PathError::DotSegmentParams),
            s => {
                segments.push(s);
                trailing = false;
            }
        }
    }
    // A final "." or ".." leaves a directory, so the path keeps a trailing slash, as RFC 3986
    // section 5.2.4 does; a plain final segment keeps whatever slash it had.
    let trailing = trailing || ends_with_slash;
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || trailing {
        out.push('/');
    }
    let matched = out.contains(';').then(|| strip_parameters(&out));
    Ok(NormalPath {
        forwarded: out,
        matched,
    })
}

/// Whether `path` is `prefix` itself or lies below it, segment by segment: `/app` covers
/// `/app` and `/app/x` but not `/apple`.
pub fn under_prefix(path: &str, prefix: &str, case_sensitive: bool) -> bool {
    // Compared as bytes: a split inside a multi-byte character must not panic.
    let (path, prefix) = (path.as_bytes(), prefix.as_bytes());
    if path.len() < prefix.len() {
        return false;
    }
    let (head, rest) = path.split_at(prefix.len());
    let head_matches = if case_sensitive {
        head == prefix
    } else {
        head.eq_ignore_ascii_case(prefix)
    };
    head_matches && (prefix.ends_with(b"/") || rest.is_empty() || rest.starts_with(b"/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(raw: &str) -> Result<String, PathError> {
        normalize(raw).map(|p| p.as_str().to_string())
    }

    fn m(raw: &str) -> Result<String, PathError> {
        normalize(raw).map(|p| p.match_form().to_string())
    }

    #[test]
    fn path_parameters_are_forwarded_but_removed_from_the_match_form() {
        assert_eq!(n("/admin;x/users"), Ok("/admin;x/users".into()));
        assert_eq!(m("/admin;x/users"), Ok("/admin/users".into()));
        assert_eq!(m("/a/b;jsessionid=1"), Ok("/a/b".into()));
        assert_eq!(m("/a;x/"), Ok("/a/".into()));
        assert_eq!(m("/a/;x/b"), Ok("/a/b".into()));
        assert_eq!(m("/a/;x"), Ok("/a/".into()));
        assert_eq!(m("/;x"), Ok("/".into()));
        assert_eq!(m("/a/b"), Ok("/a/b".into()));
        assert_eq!(m("/a;x/../b"), Ok("/b".into()));
    }

    #[test]
    fn dot_segments_with_parameters_are_refused_in_every_spelling() {
        for raw in [
            "/public/..;/private/x",
            "/public/..;x/private",
            "/public/.;x/private",
            "/public/%2e%2e;x/private",
            "/public/.%2E;/private",
            "/public/%2e;a=b",
            "/..;",
        ] {
            assert_eq!(n(raw), Err(PathError::DotSegmentParams), "{raw}");
        }
        assert_eq!(n("/a/...;x"), Ok("/a/...;x".into()));
        assert_eq!(n("/a/b;../c"), Ok("/a/b;../c".into()));
        assert_eq!(m("/a/b;../c"), Ok("/a/b/c".into()));
    }

    #[test]
    fn an_encoded_semicolon_is_refused() {
        assert_eq!(n("/admin%3bx/users"), Err(PathError::EncodedSemicolon));
        assert_eq!(n("/admin%3B"), Err(PathError::EncodedSemicolon));
    }

    #[test]
    fn double_encoded_dots_separators_and_percent_are_refused() {
        for raw in [
            "/public/%252e%252e/private/x",
            "/public/%252E",
            "/a%252fb",
            "/a%252Fb",
            "/a%255cb",
            "/a%2525",
            "/a%25252e",
            "/a%253b",
            "/a%2500",
            "/a%250a",
            "/a%257f",
            "/%2561dmin",
            "/a%25%32%65",
            "/a%25%32e",
        ] {
            assert_eq!(n(raw), Err(PathError::DoubleEncoded), "{raw}");
        }
        // A literal percent sign before anything harmless stays allowed.
        assert_eq!(n("/50%25off"), Ok("/50%25off".into()));
        assert_eq!(n("/a%2520b"), Ok("/a%2520b".into()));
        assert_eq!(n("/a%25C3"), Ok("/a%25C3".into()));
    }

    #[test]
    fn double_encoding_passes_when_the_option_is_off() {
        let lax = PathOptions {
            reject_double_encoding: false,
        };
        let forwarded = normalize_with("/public/%252e%252e/x", lax).map(|p| p.as_str().to_string());
        assert_eq!(forwarded, Ok("/public/%252e%252e/x".into()));
    }

    #[test]
    fn escapes_that_are_not_valid_utf8_are_refused() {
        for raw in [
            "/public/%c0%ae%c0%ae/private/x",
            "/a%c0%af",
            "/a%e0%80%ae",
            "/a%f0%80%80%ae",
            "/a%c1%bf",
            "/a%80",
            "/a%bf",
            "/a%ed%a0%80",
            "/a%ed%bf%bf",
            "/a%c3",
            "/a%e2%82",
            "/a%f4%90%80%80",
            "/a%ff",
            "/a%c3x",
        ] {
            assert_eq!(n(raw), Err(PathError::BadUtf8), "{raw}");
        }
        assert_eq!(n("/caf%c3%a9"), Ok("/caf%C3%A9".into()));
        assert_eq!(
            n("/%e2%82%ac/%f0%9f%98%80"),
            Ok("/%E2%82%AC/%F0%9F%98%80".into())
        );
    }

    #[test]
    fn plain_paths_are_left_alone() {
        assert_eq!(n("/"), Ok("/".into()));
        assert_eq!(n("/a/b"), Ok("/a/b".into()));
        assert_eq!(n("/a/b/"), Ok("/a/b/".into()));
    }

    #[test]
    fn dot_segments_resolve_and_double_slashes_collapse() {
        assert_eq!(n("/public/../private"), Ok("/private".into()));
        assert_eq!(n("/a/./b"), Ok("/a/b".into()));
        assert_eq!(n("//public"), Ok("/public".into()));
        assert_eq!(n("/a//b///c"), Ok("/a/b/c".into()));
        assert_eq!(n("/a/b/.."), Ok("/a/".into()));
        assert_eq!(n("/a/."), Ok("/a/".into()));
    }

    #[test]
    fn unreserved_escapes_are_decoded_before_dots_resolve() {
        assert_eq!(n("/%70ublic"), Ok("/public".into()));
        assert_eq!(n("/public/%2e%2E/private"), Ok("/private".into()));
        assert_eq!(n("/a%7eb"), Ok("/a~b".into()));
    }

    #[test]
    fn other_escapes_stay_encoded_in_upper_case() {
        assert_eq!(n("/a%20b"), Ok("/a%20b".into()));
        assert_eq!(n("/a%3fb"), Ok("/a%3Fb".into()));
    }

    #[test]
    fn encoded_separators_nul_and_backslashes_are_refused() {
        assert_eq!(
            n("/public%2f..%2fprivate"),
            Err(PathError::EncodedSeparator)
        );
        assert_eq!(n("/a%2Fb"), Err(PathError::EncodedSeparator));
        assert_eq!(n("/a%5cb"), Err(PathError::EncodedSeparator));
        assert_eq!(n("/a\\b"), Err(PathError::Backslash));
        assert_eq!(n("/a%00"), Err(PathError::Nul));
        assert_eq!(n("/a\0"), Err(PathError::Nul));
    }

    #[test]
    fn climbing_above_root_or_broken_escapes_are_refused() {
        assert_eq!(n("/.."), Err(PathError::AboveRoot));
        assert_eq!(n("/a/../../b"), Err(PathError::AboveRoot));
        assert_eq!(n("/a%2"), Err(PathError::BadEscape));
        assert_eq!(n("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(n("a/b"), Err(PathError::NotAbsolute));
    }

    #[test]
    fn the_fast_path_agrees_with_the_full_rules() {
        for raw in [
            "/a/.", "/a/..", "/./a", "//a", "/a//", "/a%41", "/a/../b", "/a;x",
        ] {
            assert!(!already_normal(raw), "{raw} is not normal");
        }
        for raw in ["/", "/a/b", "/a/b/", "/a.b/.c/d", "/.well-known/x", "/a..b"] {
            assert!(already_normal(raw), "{raw} is normal");
            assert_eq!(n(raw).unwrap(), raw);
        }
    }

    #[test]
    fn normalizing_twice_changes_nothing() {
        for raw in ["/a/../b/", "/%70/x%20y", "//a/./b/..", "/a%3F"] {
            let once = n(raw).expect("valid");
            assert_eq!(n(&once), Ok(once.clone()), "{raw}");
        }
    }
}
