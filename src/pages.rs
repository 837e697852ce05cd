//! The HTML pages Gatehouse shows itself (error pages, the connection chooser, sign-in errors,
//! the sign-out confirmation): one small template, no external assets, a strict CSP.

pub const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self' *; base-uri 'none'; frame-ancestors 'none'";

/// Escapes text for HTML bodies and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A whole page around `body` (already escaped HTML).
pub fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title}</title><style>body{{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem}}\
         .button{{display:block;margin:.5rem 0;padding:.75rem 1rem;border:1px solid #555;border-radius:.4rem;text-decoration:none;color:inherit;background:#f4f4f4;font-size:1rem;width:100%;text-align:left}}</style>\
         </head><body><main><h1>{title}</h1>{body}</main></body></html>\n",
        title = escape(title),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_are_escaped() {
        assert!(page("<x>", "").contains("<title>&lt;x&gt;</title>"));
    }
}
