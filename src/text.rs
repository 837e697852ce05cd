//! Text that came from a request or an IdP, made safe to show: in a log line (one line, no
//! control or bidi characters, capped) and in checks that refuse look-alike names.

use std::fmt;

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

#[cfg(test)]
mod tests {
    use super::*;

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
