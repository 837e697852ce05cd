//! Path normalization: the one form of a request path that rules are matched against and that
//! is forwarded upstream, so what was checked is what the app receives.
//!
//! - `%XX` of an unreserved character (`A-Z a-z 0-9 - . _ ~`) is decoded; other escapes are
//!   kept, with upper-case hex.
//! - `.` and `..` segments are resolved, `//` is collapsed.
//! - Refused: an encoded `/` or `\` (`%2f`, `%5c`), a raw `\`, NUL (raw or `%00`), a broken
//!   escape, a path that does not start with `/`, and any `..` that climbs above `/`.

use std::fmt;

/// Why a path was refused (each gives 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path must start with /")]
    NotAbsolute,
    #[error("encoded slash or backslash in a path segment")]
    EncodedSeparator,
    #[error("backslash in path")]
    Backslash,
    #[error("NUL byte in path")]
    Nul,
    #[error("malformed percent escape")]
    BadEscape,
    #[error("path climbs above /")]
    AboveRoot,
    #[error("path is not ASCII")]
    NotAscii,
    #[error("fragment in request path")]
    Fragment,
}

/// A normalized path, ready to match and to forward.
#[derive(Clone, PartialEq, Eq)]
pub struct NormalPath(String);

impl NormalPath {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for NormalPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
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

/// Decodes unreserved escapes of one raw path (no query) and checks for refused bytes.
fn decode(raw: &str, out: &mut String) -> Result<(), PathError> {
    let bytes = raw.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let (hi, lo) = match (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) {
                    (Some(hi), Some(lo)) => (hi, lo),
                    _ => return Err(PathError::BadEscape),
                };
                let decoded = hi << 4 | lo;
                match decoded {
                    b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                    0 => return Err(PathError::Nul),
                    d if is_unreserved(d) => out.push(d as char),
                    d => {
                        out.push('%');
                        out.push_str(&format!("{d:02X}"));
                    }
                }
                i += 3;
            }
            b'\\' => return Err(PathError::Backslash),
            b'#' => return Err(PathError::Fragment),
            0 => return Err(PathError::Nul),
            b if !b.is_ascii() => return Err(PathError::NotAscii),
            b => {
                out.push(b as char);
                i += 1;
            }
        }
    }
    Ok(())
}

/// Whether `raw` is already in normal form: no escapes, no dot segments, no empty segments and
/// no refused bytes. Most real paths are, and then normalizing is a single copy.
fn already_normal(raw: &str) -> bool {
    let bytes = raw.as_bytes();
    let mut previous = b'/';
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'%' | b'\\' | b'#' | 0 => return false,
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

/// Normalizes a raw request path (without its query). See the module docs for the rules.
pub fn normalize(raw: &str) -> Result<NormalPath, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if already_normal(raw) {
        return Ok(NormalPath(raw.to_string()));
    }
    let mut decoded = String::with_capacity(raw.len());
    decode(raw, &mut decoded)?;

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
    Ok(NormalPath(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(raw: &str) -> Result<String, PathError> {
        normalize(raw).map(|p| p.as_str().to_string())
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
        for raw in ["/a/.", "/a/..", "/./a", "//a", "/a//", "/a%41", "/a/../b"] {
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
