//! The paths Gatehouse serves itself under [`AUTH_PREFIX`], and the links built from them:
//! each typed out once, here.

use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};

/// The reserved prefix for the login endpoints (start, callback, sign_out, auth, userinfo).
pub const AUTH_PREFIX: &str = "/oauth2";
/// Starts a login (or shows the connection chooser).
pub const START: &str = "/oauth2/start";
/// Where the IdP sends the browser back.
pub const CALLBACK: &str = "/oauth2/callback";
/// The sign-out confirmation (GET) and sign-out (POST).
pub const SIGN_OUT: &str = "/oauth2/sign_out";
/// Forward-auth for a front proxy.
pub const FORWARD_AUTH: &str = "/oauth2/auth";
/// OIDC back-channel logout.
pub const BACKCHANNEL_LOGOUT: &str = "/oauth2/backchannel-logout";
/// The session's identity as JSON.
pub const USERINFO: &str = "/oauth2/userinfo";
/// The TOTP pages.
pub const MFA: &str = "/oauth2/mfa";

/// Percent-encodes every byte but ASCII letters and digits (query values).
pub fn encode(text: &str) -> String {
    utf8_percent_encode(text, NON_ALPHANUMERIC).to_string()
}

/// The login link: `/oauth2/start?connection=..&rd=..` (`connection` when one is chosen; `rd`
/// as the raw return address, encoded here).
pub fn start_link(connection: Option<&str>, rd: &str) -> String {
    match connection {
        Some(id) => format!("{START}?connection={}&rd={}", encode(id), encode(rd)),
        None => format!("{START}?rd={}", encode(rd)),
    }
}

/// `path?rd=..` with `rd` encoded here.
pub fn with_rd(path: &str, rd: &str) -> String {
    format!("{path}?rd={}", encode(rd))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every endpoint lies under the reserved prefix the router sends to the login endpoints.
    #[test]
    fn every_endpoint_is_under_the_auth_prefix() {
        for path in [
            START,
            CALLBACK,
            SIGN_OUT,
            FORWARD_AUTH,
            BACKCHANNEL_LOGOUT,
            USERINFO,
            MFA,
        ] {
            let rest = path.strip_prefix(AUTH_PREFIX).expect(path);
            assert!(rest.starts_with('/') && rest.len() > 1, "{path}");
        }
    }

    /// The return address and connection id are encoded, so neither can add a parameter.
    #[test]
    fn start_links_encode_their_values() {
        assert_eq!(
            start_link(Some("a&b"), "/x?y=1&z"),
            "/oauth2/start?connection=a%26b&rd=%2Fx%3Fy%3D1%26z"
        );
        assert_eq!(start_link(None, "/"), "/oauth2/start?rd=%2F");
    }
}
