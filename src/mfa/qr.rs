//! The enrolment QR code as an SVG string, meant to be inlined in a Gatehouse page.
//!
//! Rendered with the `qrcode` crate. The page's Content-Security-Policy is strict, so the SVG
//! refers to nothing outside itself: no links, no fonts, no styles, only a rectangle and a path.
//! The XML declaration and the `xmlns` attribute are left out: an `<svg>` element inside an HTML
//! document is in the SVG namespace without them (serve it standalone and it would need them).

use qrcode::render::svg;
use qrcode::{EcLevel, QrCode};

/// Smallest rendered side, in CSS pixels.
const MIN_SIDE: u32 = 200;
const SVG_NAMESPACE: &str = r#" xmlns="http://www.w3.org/2000/svg""#;

/// Why no QR code could be drawn.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QrError {
    #[error("cannot encode the QR code: {0}")]
    Encode(String),
    #[error("the rendered QR code is not self-contained SVG")]
    NotSelfContained,
}

/// `text` (the otpauth URI) as an inline SVG QR code, with a quiet zone and an accessible label.
pub fn svg(text: &str) -> Result<String, QrError> {
    let code = QrCode::with_error_correction_level(text.as_bytes(), EcLevel::M)
        .map_err(|e| QrError::Encode(e.to_string()))?;
    let rendered = code
        .render::<svg::Color>()
        .quiet_zone(true)
        .min_dimensions(MIN_SIDE, MIN_SIDE)
        .dark_color(svg::Color("#000"))
        .light_color(svg::Color("#fff"))
        .build();
    inline_form(&rendered).ok_or(QrError::NotSelfContained)
}

/// Turns the crate's standalone SVG document into an element to inline, and checks that it
/// refers to nothing outside itself.
fn inline_form(rendered: &str) -> Option<String> {
    let start = rendered.find("<svg")?;
    let element = rendered[start..].replacen(SVG_NAMESPACE, "", 1);
    let element = element.replacen(
        "<svg ",
        r#"<svg role="img" aria-label="QR code for your authenticator app" "#,
        1,
    );
    let lower = element.to_ascii_lowercase();
    let external = [
        "href", "http", "url(", "<image", "<style", "<script", "<foreign",
    ];
    if external.iter().any(|needle| lower.contains(needle)) || !element.ends_with("</svg>") {
        return None;
    }
    Some(element)
}

#[cfg(test)]
mod tests {
    use super::*;

    const URI: &str = "otpauth://totp/Gatehouse:alice?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ\
                       &issuer=Gatehouse&algorithm=SHA1&digits=6&period=30";

    #[test]
    fn the_qr_code_is_an_svg_element_with_no_external_references() {
        let svg = svg(URI).unwrap();
        assert!(svg.starts_with("<?xml") || svg.starts_with("<svg"), "{svg}");
        assert!(svg.ends_with("</svg>"));
        let lower = svg.to_ascii_lowercase();
        assert!(!lower.contains("href"));
        assert!(!lower.contains("http"));
        assert!(svg.contains("<path"));
        assert!(svg.contains(r#"role="img""#));
    }

    #[test]
    fn the_qr_code_is_at_least_two_hundred_pixels_wide() {
        let svg = svg(URI).unwrap();
        let width: u32 = svg
            .split("width=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .and_then(|w| w.parse().ok())
            .unwrap();
        assert!(width >= MIN_SIDE, "{width}");
    }

    #[test]
    fn anything_that_points_outside_is_refused() {
        assert_eq!(
            inline_form(r#"<svg width="1"><image href="x"/></svg>"#),
            None
        );
        assert_eq!(inline_form(r#"<svg width="1"><a href="x"/></svg>"#), None);
        assert_eq!(inline_form("no svg here"), None);
    }

    #[test]
    fn text_too_long_for_a_qr_code_is_an_error() {
        let long = "x".repeat(8000);
        assert!(matches!(svg(&long), Err(QrError::Encode(_))));
    }
}
