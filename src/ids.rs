//! Random identifiers: session ids, pending-login ids, generated usernames, and W3C trace
//! context (`traceparent`).

use base64::Engine;

/// A random 256-bit id, URL-safe base64 without padding (43 characters).
pub fn random_id() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Writes `value` in lowercase hex, at least `width` digits (zeros in front), as
/// `format!("{value:0width$x}")` does, without the formatting machinery (ids are made on
/// every request).
pub fn push_hex(out: &mut String, value: u128, width: usize) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    // At least one digit: zero is written "0", as `format!` writes it.
    let needed = (128 - value.leading_zeros() as usize).div_ceil(4).max(1);
    for _ in needed..width {
        out.push('0');
    }
    let mut digits = [0u8; 32];
    for (i, digit) in digits.iter_mut().rev().enumerate() {
        *digit = DIGITS[((value >> (i * 4)) & 0xf) as usize];
    }
    // Hex digits are ASCII, so this always succeeds.
    if let Ok(text) = std::str::from_utf8(&digits[32 - needed..]) {
        out.push_str(text);
    }
}

/// The W3C Trace Context header (<https://www.w3.org/TR/trace-context/>).
pub const TRACEPARENT: &str = "traceparent";
/// [`TRACEPARENT`] as a parsed name, for look-ups (a `&str` name is parsed on every one).
pub const TRACEPARENT_NAME: http::HeaderName = http::HeaderName::from_static(TRACEPARENT);
/// Vendor trace state; meaningless without the `traceparent` it came with.
pub const TRACESTATE: &str = "tracestate";

/// A valid `traceparent` value: `version-traceid-parentid-flags` in lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent(String);

impl TraceParent {
    /// The value when it is a valid `traceparent`: version `00` exactly as the spec writes
    /// it; a later version (not `ff`) by its first four fields, with more after a `-` allowed.
    /// A trace id or parent id of all zeros is invalid.
    pub fn parse(value: &str) -> Option<Self> {
        let bytes = value.as_bytes();
        if bytes.len() < 55 {
            return None;
        }
        let hex = |range: std::ops::Range<usize>| {
            bytes[range]
                .iter()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
        };
        let zeros = |range: std::ops::Range<usize>| bytes[range].iter().all(|b| *b == b'0');
        let shape = hex(0..2)
            && bytes[2] == b'-'
            && hex(3..35)
            && bytes[35] == b'-'
            && hex(36..52)
            && bytes[52] == b'-'
            && hex(53..55);
        if !shape || &bytes[0..2] == b"ff" || zeros(3..35) || zeros(36..52) {
            return None;
        }
        let length_ok = if &bytes[0..2] == b"00" {
            bytes.len() == 55
        } else {
            bytes.len() == 55 || bytes[55] == b'-'
        };
        // Only printable ASCII beyond the known fields (a header value Gatehouse passes on).
        let tail_ok = bytes[55..].iter().all(|b| b.is_ascii_graphic());
        (length_ok && tail_ok).then(|| Self(value.to_string()))
    }

    /// A new trace: random trace id and parent id, flags `00` (Gatehouse records no spans).
    pub fn generate() -> Self {
        let trace: u128 = rand::random::<u128>().max(1);
        let parent: u64 = rand::random::<u64>().max(1);
        let mut value = String::with_capacity(55);
        value.push_str("00-");
        push_hex(&mut value, trace, 32);
        value.push('-');
        push_hex(&mut value, u128::from(parent), 16);
        value.push_str("-00");
        Self(value)
    }

    /// The 32 hex digits that name the trace (in the access log).
    pub fn trace_id(&self) -> &str {
        &self.0[3..35]
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    /// The spec's example is kept as it is; a later version may carry more fields.
    #[test]
    fn a_valid_traceparent_is_kept() {
        let t = TraceParent::parse(VALID).unwrap();
        assert_eq!(t.as_str(), VALID);
        assert_eq!(t.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra";
        assert!(TraceParent::parse(later).is_some());
    }

    /// Every way a value can break the format is refused: upper case, zero ids, version ff,
    /// wrong lengths, wrong separators, extra fields on version 00.
    #[test]
    fn an_invalid_traceparent_is_refused() {
        for bad in [
            "",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(TraceParent::parse(bad).is_none(), "{bad:?}");
        }
    }

    proptest! {
        /// A generated traceparent is always valid and new.
        #[test]
        fn generated_traceparents_are_valid(_n in 0..50u8) {
            let a = TraceParent::generate();
            prop_assert_eq!(TraceParent::parse(a.as_str()), Some(a.clone()));
            prop_assert_ne!(a, TraceParent::generate());
        }

        /// Any text is either refused or kept byte for byte, and a kept one has a
        /// lowercase-hex trace id that is not all zeros: nothing else reaches a log line.
        #[test]
        fn any_text_is_refused_or_kept_whole(text in "\\PC{0,70}") {
            if let Some(t) = TraceParent::parse(&text) {
                prop_assert_eq!(t.as_str(), text.as_str());
                prop_assert!(t.trace_id().bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
                prop_assert!(t.trace_id().bytes().any(|b| b != b'0'));
            }
        }

        /// Changing one character of a valid value to a non-hex one is refused.
        #[test]
        fn one_bad_character_is_refused(at in 0usize..55, c in "[g-zG-Z_ .]") {
            let mut bytes = VALID.as_bytes().to_vec();
            bytes[at] = c.as_bytes()[0];
            let text = String::from_utf8(bytes).unwrap();
            prop_assert!(TraceParent::parse(&text).is_none(), "{}", text);
        }
    }

    proptest! {
        /// Hex is written as `format!` writes it, for every width.
        #[test]
        fn hex_is_written_as_format_writes_it(value in any::<u128>(), shift in 0u32..128, width in 0usize..40) {
            let value = value >> shift;
            let mut out = String::new();
            push_hex(&mut out, value, width);
            prop_assert_eq!(out, format!("{value:0width$x}"));
        }
    }

    #[test]
    fn zero_and_the_largest_value_are_written_as_format_writes_them() {
        for (value, width) in [(0, 0), (0, 1), (0, 5), (u128::MAX, 0), (u128::MAX, 40)] {
            let mut out = String::new();
            push_hex(&mut out, value, width);
            assert_eq!(out, format!("{value:0width$x}"));
        }
    }

    #[test]
    fn random_ids_are_url_safe_and_do_not_repeat() {
        let a = random_id();
        let b = random_id();
        assert_eq!(a.len(), 43);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        assert_ne!(a, b);
    }
}
