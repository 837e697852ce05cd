//! Gatehouse's own pages and endpoints: the `/oauth2/*` endpoints (login, callback, sign-out,
//! forward-auth, back-channel logout, userinfo), the TOTP pages, early answers written to a
//! pingora session, the page templates, the one `Set-Cookie` builder and form parsing.
//!
//! Layer: `web` uses `config`, `store`, `identity`, `mfa`, `auth` and the leaves; nothing
//! below uses `web`, and `web` never uses `proxy`, `server` or `admin` (the proxy calls in).
//!
//! - [`paths`]: every path under `/oauth2` and the links built from them, in one place.
//! - [`templates`]: the one layout and the page parts (maud; branded from `[pages]`).
//! - [`respond`]: writing a whole answer (page, JSON, redirect) to a pingora session.
//! - Cookies: every `Set-Cookie` comes from one builder, `auth::session::Sessions::set_cookie_header`
//!   (the `cookie` crate), which sits in `auth` because sessions (below `web`) set cookies too;
//!   request cookies keep the tolerant parser of `auth::session` (see its proptests).
//! - [`forms`]: query strings and form bodies (`form_urlencoded`), and reading a form body.
//! - [`endpoints`]: the `/oauth2/*` endpoints.
//! - [`mfa`]: `/oauth2/mfa`, the TOTP enrolment and code pages.

pub mod endpoints;
pub mod forms;
pub mod mfa;
pub mod paths;
pub mod respond;
pub mod templates;

pub use forms::BodyTimeout;
pub use templates::Theme;

/// The client's address as the proxy resolved it (`X-Forwarded-For` from a trusted proxy,
/// else the peer), kept in the request's extensions for the pages that name it (the Email
/// OTP mail says which address the sign-in came from).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub std::net::IpAddr);
