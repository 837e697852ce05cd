//! The HTML pages Gatehouse shows itself (error pages, the connection chooser, sign-in errors,
//! the sign-out confirmation, the TOTP pages): one layout ([`page`]), the parts pages share,
//! no external assets, a strict CSP.
//!
//! Built with [`maud`]'s `html!` macro because it is checked when the crate compiles (a typo
//! in a template is a build error, not a broken page), escapes every interpolated value by
//! default (unescaped HTML has to be spelled `PreEscaped`, a visible decision), needs no
//! template files at run time and no build step. The price of a compile-time engine is that
//! operators cannot replace whole templates; instead `[pages]` brands the layout (title, logo,
//! accent colour) and `templates_dir` may hold a small documented set of override files
//! ([`crate::config::model::PageOverrides`]): `style.css` is appended after the built-in
//! style, `header.html` and `footer.html` are inserted verbatim (operator-trusted HTML).
//!
//! Every page has `lang`, labelled fields, visible focus, readable contrast in light and dark
//! mode (`prefers-color-scheme`), and works without JavaScript (there is none).

use std::sync::Arc;

use maud::{html, Markup, PreEscaped, DOCTYPE};

use crate::config::model::{HexColor, Pages};

pub const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' https:; form-action 'self' *; base-uri 'none'; frame-ancestors 'none'";

/// The branding of a request's pages: `[pages]` from config, put in the request's extensions
/// by the proxy when the request starts (like [`super::BodyTimeout`]); the defaults when
/// absent.
#[derive(Debug, Clone, Default)]
pub struct Theme(pub Arc<Pages>);

impl Theme {
    /// The theme of the request `session` is serving.
    pub fn of(session: &pingora::proxy::Session) -> Theme {
        session
            .req_header()
            .extensions
            .get::<Theme>()
            .cloned()
            .unwrap_or_default()
    }
}

/// The built-in style: light colours, dark ones under `prefers-color-scheme: dark`, and a
/// focus ring on everything that takes focus. Text contrasts are at least 4.5:1 in both.
const BASE_CSS: &str = "\
:root{color-scheme:light dark;--bg:#ffffff;--fg:#1a1a1a;--muted:#555555;--accent:#0b57d0}\
@media (prefers-color-scheme:dark){:root{--bg:#1a1a1a;--fg:#f0f0f0;--muted:#bbbbbb;--accent:#8ab4f8}}\
body{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem;background:var(--bg);color:var(--fg)}\
a{color:var(--accent)}\
.button{display:block;box-sizing:border-box;margin:.5rem 0;padding:.75rem 1rem;border:2px solid var(--accent);border-radius:.4rem;text-decoration:none;color:var(--accent);background:var(--bg);font:inherit;font-weight:600;width:100%;text-align:left;cursor:pointer}\
label{display:block;margin:.75rem 0 .25rem;font-weight:600}\
input{font:inherit;padding:.5rem;border:1px solid var(--muted);border-radius:.3rem;background:var(--bg);color:var(--fg)}\
a:focus-visible,button:focus-visible,input:focus-visible{outline:3px solid var(--accent);outline-offset:2px}\
small{color:var(--muted)}\
header.site{display:flex;align-items:center;gap:.75rem;margin-bottom:1.5rem;font-weight:600}\
header.site img{max-height:3rem;max-width:12rem}\
#qr{background:#ffffff;padding:.5rem;display:inline-block}\
code{word-break:break-all}";

/// A whole page: the layout around `body`, branded by `theme`.
pub fn page(theme: &Theme, title: &str, body: Markup) -> String {
    let pages = &*theme.0;
    let accent = pages.accent_color.map(accent_css);
    // Beside the site title the logo is decoration; alone it stands for the site.
    let logo_alt = if pages.title.is_some() { "" } else { "Logo" };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title {
                    (title)
                    @if let Some(site) = &pages.title { " · " (site) }
                }
                style {
                    (PreEscaped(BASE_CSS))
                    @if let Some(accent) = &accent { (PreEscaped(accent)) }
                    // Operator-trusted, checked at startup (no `</style`).
                    @if let Some(css) = &pages.overrides.style_css { (PreEscaped(css)) }
                }
            }
            body {
                // Operator-trusted HTML from `templates_dir`.
                @if let Some(header) = &pages.overrides.header_html { (PreEscaped(header)) }
                @if pages.title.is_some() || pages.logo_url.is_some() {
                    header class="site" {
                        @if let Some(logo) = &pages.logo_url {
                            img id="site-logo" src=(logo) alt=(logo_alt);
                        }
                        @if let Some(site) = &pages.title { span id="site-title" { (site) } }
                    }
                }
                main {
                    h1 { (title) }
                    (body)
                }
                @if let Some(footer) = &pages.overrides.footer_html { (PreEscaped(footer)) }
            }
        }
    }
    .into_string()
        + "\n"
}

/// The configured accent colour, in each colour scheme where it is readable as text (4.5:1 on
/// that background); a scheme where it is not keeps the built-in accent (and `check-config`
/// says so). Each rule sits in its own `prefers-color-scheme` block, so neither overrides the
/// other's built-in default. `HexColor::css` gives only `#rrggbb`, so nothing else reaches
/// the style.
fn accent_css(accent: HexColor) -> String {
    let c = accent.css();
    let mut css = String::new();
    if accent.readable_on(&HexColor::LIGHT_BG) {
        css.push_str(&format!(
            "@media (prefers-color-scheme:light){{:root{{--accent:{c}}}}}"
        ));
    }
    if accent.readable_on(&HexColor::DARK_BG) {
        css.push_str(&format!(
            "@media (prefers-color-scheme:dark){{:root{{--accent:{c}}}}}"
        ));
    }
    css
}

/// One paragraph of text.
pub fn para(text: &str) -> Markup {
    html! { p { (text) } }
}

/// The request id, small, under an error message.
pub fn request_id(id: &str) -> Markup {
    html! { p { small { "Request id: " (id) } } }
}

/// The one "Sign in with <connection>" button (`id` for the chooser's buttons).
pub fn sign_in_button(id: Option<&str>, href: &str, label: &str) -> Markup {
    html! {
        a class="button" id=[id] href=(href) { "Sign in with " (label) }
    }
}

/// "Sign in again", back to the start of a login.
pub fn sign_in_again() -> Markup {
    html! { p { a href=(super::paths::START) { "Sign in again" } } }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::PageOverrides;

    fn branded() -> Theme {
        Theme(Arc::new(Pages {
            title: Some("Acme <Corp>".into()),
            logo_url: Some("/logo.png".into()),
            accent_color: HexColor::parse("#1f6f43"),
            overrides: PageOverrides {
                style_css: Some("body{margin:0}".into()),
                header_html: Some("<div id=\"op-header\">hi</div>".into()),
                footer_html: Some("<div id=\"op-footer\">bye</div>".into()),
            },
        }))
    }

    /// Titles and body text are escaped: a value cannot open a tag.
    #[test]
    fn titles_are_escaped() {
        let page = page(&Theme::default(), "<x>", para("<script>"));
        assert!(page.contains("<title>&lt;x&gt;</title>"), "{page}");
        assert!(page.contains("&lt;script&gt;") && !page.contains("<script>"));
        assert!(page.contains("<html lang=\"en\">"));
    }

    /// The branding appears: site title (escaped), logo, accent colour in light and dark
    /// mode, and the operator's override files, verbatim, in their places.
    #[test]
    fn a_branded_page_shows_the_configured_parts() {
        let page = page(&branded(), "Sign in", para("x"));
        assert!(
            page.contains("<title>Sign in · Acme &lt;Corp&gt;</title>"),
            "{page}"
        );
        assert!(page.contains("<span id=\"site-title\">Acme &lt;Corp&gt;</span>"));
        assert!(
            page.contains("<img id=\"site-logo\" src=\"/logo.png\" alt=\"\">"),
            "{page}"
        );
        assert!(page.contains("{:root{--accent:#1f6f43}}"), "{page}");
        let css = page.find("body{margin:0}").unwrap();
        assert!(
            css > page.find("--accent:#1f6f43").unwrap(),
            "overrides come last"
        );
        let (header, main, footer) = (
            page.find("op-header").unwrap(),
            page.find("<main>").unwrap(),
            page.find("op-footer").unwrap(),
        );
        assert!(header < main && main < footer);
    }

    /// An unbranded page has no header, and the built-in style has a dark variant and focus
    /// rings.
    #[test]
    fn the_default_page_has_dark_mode_and_focus_styles() {
        let page = page(&Theme::default(), "T", para("x"));
        assert!(!page.contains("class=\"site\""));
        assert!(page.contains("prefers-color-scheme:dark"));
        assert!(page.contains(":focus-visible"));
    }

    /// A configured accent is used only in the colour schemes where it is readable: a dark
    /// green in light mode only, a light blue in dark mode only.
    #[test]
    fn the_accent_colour_applies_only_where_it_is_readable() {
        let dark_green = accent_css(HexColor::parse("#1f6f43").unwrap());
        assert_eq!(
            dark_green,
            "@media (prefers-color-scheme:light){:root{--accent:#1f6f43}}"
        );
        let light_blue = accent_css(HexColor::parse("#9cc3ff").unwrap());
        assert_eq!(
            light_blue,
            "@media (prefers-color-scheme:dark){:root{--accent:#9cc3ff}}"
        );
    }

    proptest::proptest! {
        /// Whatever text goes into a page (title, paragraph, a sign-in button's label and
        /// link, the request id, the site title), the page has exactly the markup it has for
        /// plain text: as many `<` and `"` as with "x" everywhere. No value opens a tag or
        /// leaves an attribute.
        #[test]
        fn no_value_adds_markup(text in ".*") {
            let render = |v: &str| {
                let theme = Theme(Arc::new(Pages {
                    title: Some(v.to_string()),
                    logo_url: Some("/l.png".into()),
                    ..Pages::default()
                }));
                let body = html! {
                    (para(v)) (sign_in_button(Some(v), v, v)) (request_id(v))
                };
                page(&theme, v, body)
            };
            let (hostile, plain) = (render(&text), render("x"));
            for c in ['<', '>', '"'] {
                proptest::prop_assert_eq!(
                    hostile.matches(c).count(),
                    plain.matches(c).count(),
                    "{:?} in {}", c, hostile
                );
            }
        }
    }

    /// The built-in colours meet 4.5:1 for text in both modes.
    #[test]
    fn the_built_in_colours_are_readable() {
        let c = |s| HexColor::parse(s).unwrap();
        for (fg, bg) in [
            ("#1a1a1a", "#ffffff"),
            ("#555555", "#ffffff"),
            ("#0b57d0", "#ffffff"),
            ("#f0f0f0", "#1a1a1a"),
            ("#bbbbbb", "#1a1a1a"),
            ("#8ab4f8", "#1a1a1a"),
        ] {
            assert!(c(fg).contrast(&c(bg)) >= 4.5, "{fg} on {bg}");
        }
    }
}

/// What an Email OTP mail says about the sign-in it is for.
#[derive(Debug, Clone)]
pub struct EmailOtpFacts<'a> {
    pub code: &'a str,
    /// "signing in" or "opening a page that needs a second step".
    pub purpose: &'a str,
    /// When the sign-in was asked for (RFC 3339, UTC).
    pub at: String,
    pub connection: &'a str,
    pub client_ip: &'a str,
    /// When the code stops working (RFC 3339, UTC) and in how many minutes.
    pub expires_at: String,
    pub expires_in_minutes: u64,
}

/// The Email OTP mail: subject, plain text and a simple HTML part in the pages' style (no
/// links, no images, nothing remote: nothing in it signs anyone in or tracks the reader).
pub fn email_otp_mail(f: &EmailOtpFacts<'_>) -> (String, String, String) {
    let subject = format!("Your sign-in code: {}", f.code);
    let text = format!(
        "Your one-time sign-in code is: {code}\n\n\
         It is for {purpose} with {connection}, asked for at {at} from {ip}.\n\
         It expires at {exp} (in {mins} minute(s)) and works once.\n\n\
         If this was not you, do not share the code with anyone; someone may know your password.\n",
        code = f.code,
        purpose = f.purpose,
        connection = f.connection,
        at = f.at,
        ip = f.client_ip,
        exp = f.expires_at,
        mins = f.expires_in_minutes,
    );
    let html = html! {
        (DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; title { "Your sign-in code" } }
            body style="font-family:system-ui,sans-serif;max-width:32rem;margin:2rem auto;padding:0 1rem;color:#1a1a1a;background:#ffffff" {
                p { "Your one-time sign-in code is:" }
                p style="font-size:2rem;font-weight:600;letter-spacing:.2em" { code id="code" { (f.code) } }
                p {
                    "It is for " (f.purpose) " with " strong { (f.connection) } ", asked for at "
                    (f.at) " from " (f.client_ip) "."
                }
                p { "It expires at " (f.expires_at) " (in " (f.expires_in_minutes) " minute(s)) and works once." }
                p style="color:#555555" {
                    "If this was not you, do not share the code with anyone; someone may know your password."
                }
            }
        }
    };
    (subject, text, html.into_string())
}
