//! The login endpoints under `/oauth2/`: start, callback, sign_out, auth (forward-auth) and
//! userinfo. Each writes its own response; the proxy calls [`handle`] for `/oauth2/*`.

use crate::metrics::{LoginResult, LogoutKind};
use std::time::Instant;

use bytes::Bytes;
use http::header::{LOCATION, SET_COOKIE};
use http::{HeaderName, StatusCode};
use pingora::proxy::Session;
use serde::{Deserialize, Serialize};

use crate::auth::login::{complete_login_off_thread, Completed, LoginFailure};
use crate::auth::oidc::OidcError;
use crate::auth::session::{request_cookies, Lookup, SessionsOf};
use crate::auth::throttle::Endpoint;
use crate::auth::AuthView;
use maud::html;

use super::forms::{form_pairs, param, read_form};
use super::paths::{self, encode};
use super::respond::{self, html_page as html, redirect};
use super::templates::{self, Theme};
use crate::text::Escaped;

const LOGIN_PURPOSE: &str = "login";
const SIGN_OUT_PURPOSE: &str = "sign-out";

/// What the login cookie remembers between `/oauth2/start` and `/oauth2/callback`.
#[derive(Serialize, Deserialize)]
struct LoginState {
    state: String,
    nonce: String,
    verifier: String,
    rd: String,
    conn: String,
    redirect_uri: String,
    exp: u64,
}

fn host_header(session: &Session) -> Option<String> {
    let req = session.req_header();
    req.headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri.authority().map(|a| a.to_string()))
}

/// 400 for a login started with a Host no callback address can be built from (a client
/// mistake: not counted as an unreachable IdP).
async fn bad_callback_address(session: &mut Session) -> pingora::Result<()> {
    html(
        session,
        StatusCode::BAD_REQUEST,
        "Bad request",
        templates::para("The request does not name a valid host."),
        vec![],
    )
    .await
}

/// `scheme://host` users reach Gatehouse at: from config, else from this request (whose
/// forwarding headers were already sanitized).
fn external_base(auth: &AuthView, session: &Session) -> String {
    if let Some(url) = &auth.settings.login.external_url {
        return url.clone();
    }
    let proto = session
        .req_header()
        .headers
        .get(crate::headers::X_FORWARDED_PROTO)
        .and_then(|v| v.to_str().ok())
        .filter(|p| *p == "https" || *p == "http")
        .unwrap_or("http");
    format!("{proto}://{}", host_header(session).unwrap_or_default())
}

/// Whether the request came over https: Gatehouse's TLS listener, or `X-Forwarded-Proto:
/// https` (which only a trusted proxy can set: from anyone else it was replaced by the
/// listener's own scheme before this point).
fn came_over_https(session: &Session) -> bool {
    let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
    let forwarded = session
        .req_header()
        .headers
        .get(crate::headers::X_FORWARDED_PROTO)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"));
    tls || forwarded
}

/// The redirect target if it is safe, else `/`. A request that came over https is never
/// sent on to an `http://` URL.
pub(crate) fn safe_rd(auth: &AuthView, session: &Session, rd: Option<&str>) -> String {
    let host = host_header(session);
    let https = came_over_https(session);
    rd.and_then(|rd| {
        auth.settings
            .redirects
            .check_from(rd, host.as_deref(), https)
    })
    .unwrap_or_else(|| "/".to_string())
}

/// Length of the `state` Gatehouse issues: 16 random bytes, base64url without padding.
const STATE_LEN: usize = 22;

/// A `state` parameter exactly as Gatehouse issues it: [`STATE_LEN`] base64url characters
/// that decode (canonically) to 16 bytes. Only such a state may become part of a cookie name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IssuedState<'a>(&'a str);

impl<'a> IssuedState<'a> {
    pub(crate) fn parse(raw: &'a str) -> Option<Self> {
        use base64::Engine;
        let alphabet = raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        let canonical = || {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(raw)
                .is_ok_and(|bytes| bytes.len() == 16)
        };
        (raw.len() == STATE_LEN && alphabet && canonical()).then_some(Self(raw))
    }

    pub(crate) fn as_str(&self) -> &'a str {
        self.0
    }
}

fn login_cookie_name(auth: &AuthView, state: IssuedState<'_>) -> String {
    let key: String = state.as_str().chars().take(16).collect();
    format!("{}_login_{key}", auth.sessions.config().cookie_name)
}

/// Serves `/oauth2/*`. Always writes the response: returns `Ok(true)`.
pub async fn handle(
    auth: &AuthView,
    session: &mut Session,
    path: &str,
    request_id: &str,
    client: Option<std::net::IpAddr>,
) -> pingora::Result<bool> {
    let endpoint = match path {
        paths::START | paths::CALLBACK => Some(Endpoint::Login),
        paths::MFA => Some(Endpoint::Mfa),
        paths::BACKCHANNEL_LOGOUT => Some(Endpoint::Backchannel),
        _ => None,
    };
    if let Some(endpoint) = endpoint {
        if let Err(wait) = auth.throttle.check(endpoint, client) {
            auth.metrics.rate_limited(endpoint.label());
            tracing::info!(request_id, endpoint = endpoint.label().as_str(), client = ?client, "rate limited");
            too_many_requests(session, wait, request_id).await?;
            return Ok(true);
        }
    }
    let query = session.req_header().uri.query().unwrap_or("").to_string();
    let pairs = form_pairs(query.as_bytes());
    match path {
        paths::START | paths::CALLBACK if auth.store_down() => {
            // A login writes the store: with a shared store down, say so at once.
            tracing::warn!(
                request_id,
                "login refused: the shared store does not answer"
            );
            let error = crate::error::RequestError::StoreUnavailable;
            respond::error(session, &error, request_id).await?
        }
        paths::START => start(auth, session, &pairs).await?,
        paths::CALLBACK => callback(auth, session, &pairs, request_id).await?,
        paths::SIGN_OUT => sign_out(auth, session, &pairs).await?,
        paths::FORWARD_AUTH => forward_auth(auth, session, request_id).await?,
        paths::BACKCHANNEL_LOGOUT => backchannel_logout(auth, session).await?,
        paths::USERINFO => userinfo(auth, session).await?,
        paths::MFA => super::mfa::handle(auth, session, &pairs, request_id).await?,
        _ => {
            html(
                session,
                StatusCode::NOT_FOUND,
                "Not found",
                templates::para("Nothing is served at this address."),
                vec![],
            )
            .await?
        }
    }
    Ok(true)
}

/// 429 with `Retry-After` (whole seconds, at least 1): a page for browsers, JSON for others.
async fn too_many_requests(
    session: &mut Session,
    wait: std::time::Duration,
    request_id: &str,
) -> pingora::Result<()> {
    let req = session.req_header();
    let browser = respond::is_browser(&req.method, &req.headers);
    let (kind, body) = respond::error_body(
        &Theme::of(session),
        StatusCode::TOO_MANY_REQUESTS,
        "Too many sign-in requests came from your address. Please wait a moment and try again.",
        request_id,
        browser,
    );
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let extra = [(http::header::RETRY_AFTER, seconds.max(1).to_string())];
    respond::send(session, StatusCode::TOO_MANY_REQUESTS, kind, body, &extra).await
}

/// `/oauth2/start`: picks the connection (or shows the chooser), then sends the browser to the
/// IdP with a fresh state, nonce and PKCE challenge kept in a login cookie named by the state.
async fn start(
    auth: &AuthView,
    session: &mut Session,
    pairs: &[(String, String)],
) -> pingora::Result<()> {
    let rd = safe_rd(auth, session, param(pairs, "rd"));
    let providers = &auth.settings.providers;
    let asked = param(pairs, "connection");
    let chosen = asked
        .or(auth.settings.login.default_connection.as_deref())
        .or_else(|| (providers.len() == 1).then(|| providers[0].connection.id.as_str()));
    let Some(provider) = chosen.and_then(|id| auth.provider(id)) else {
        // A connection that is not (or no longer) configured starts no login: the page says
        // so and offers the ones there are.
        let unknown = asked.is_some();
        let (status, intro) = if unknown {
            (
                StatusCode::NOT_FOUND,
                "This sign-in method is not offered (any more). Choose another way to sign in.",
            )
        } else {
            (StatusCode::OK, "Choose how to sign in.")
        };
        let body = html! {
            (templates::para(intro))
            @for p in providers {
                (templates::sign_in_button(
                    Some(&format!("connection-{}", p.connection.id)),
                    &paths::start_link(Some(&p.connection.id), &rd),
                    &p.connection.display_name,
                ))
            }
        };
        return html(session, status, "Sign in", body, vec![]).await;
    };
    if auth.settings.login.external_url.is_none() && host_header(session).is_none() {
        // An HTTP/1.0 request without Host: no address to come back to. A client mistake.
        return bad_callback_address(session).await;
    }
    let redirect_uri = format!("{}{}", external_base(auth, session), paths::CALLBACK);
    if provider.current().is_none() {
        // The IdP was down: try it now (rate-limited) rather than wait for the retry backoff.
        provider.discover_on_demand().await;
    }
    let authorization = match provider.authorize(&redirect_uri) {
        Ok(a) => a,
        Err(OidcError::BadRedirect(e)) => {
            tracing::debug!(error = %Escaped(&e), "cannot build the callback address from this request");
            return bad_callback_address(session).await;
        }
        Err(e) => {
            tracing::warn!(connection = %provider.connection.id, error = %Escaped(&e), "cannot start a login");
            auth.metrics
                .login(&provider.connection.id, LoginResult::IdpUnavailable);
            let body = templates::para(
                "The sign-in service is not reachable right now. Please try again in a moment.",
            );
            return html(
                session,
                StatusCode::BAD_GATEWAY,
                "Sign-in unavailable",
                body,
                vec![],
            )
            .await;
        }
    };
    let ttl = auth.login_timeout.as_secs();
    let state = LoginState {
        state: authorization.state.clone(),
        nonce: authorization.nonce,
        verifier: authorization.pkce_verifier,
        rd,
        conn: provider.connection.id.clone(),
        redirect_uri,
        exp: auth.clock.now() + ttl,
    };
    let sealed = auth.sessions.sealer().seal(
        LOGIN_PURPOSE,
        &serde_json::to_vec(&state).unwrap_or_default(),
    );
    let Some(issued) = IssuedState::parse(&authorization.state) else {
        tracing::error!("the OIDC library made a state of an unexpected form");
        return html(
            session,
            StatusCode::INTERNAL_SERVER_ERROR,
            "Sign-in unavailable",
            templates::para("The sign-in could not be started."),
            vec![],
        )
        .await;
    };
    let cookie = auth.sessions.set_cookie_header(
        &login_cookie_name(auth, issued),
        &sealed,
        Some(paths::CALLBACK),
        ttl,
    );
    redirect(session, &authorization.url, vec![cookie]).await
}

/// Why a callback did not end in a session: each maps to one `gatehouse_logins_total`
/// result, one status and one message, here and nowhere else.
enum Refusal {
    /// No matching, unexpired, unused login cookie; a wrong `iss`; no code.
    StateInvalid(&'static str),
    /// The IdP answered with `error=<code>`.
    IdpError(String),
    TokenInvalid(OidcError),
    ExchangeFailed(OidcError),
    StoreError(crate::store::StoreError),
    /// The local account refused the login (disabled, or an unverified email to link).
    Account(crate::identity::jit::JitRefusal),
    /// TOTP is required and this connection keeps no local account (`deny`).
    MfaConflict,
}

impl Refusal {
    /// What the log says (the cause, which the page does not show).
    fn detail(&self) -> String {
        match self {
            Refusal::StateInvalid(why) => (*why).to_string(),
            Refusal::IdpError(code) => format!("the IdP answered error={code}"),
            Refusal::TokenInvalid(e) | Refusal::ExchangeFailed(e) => e.to_string(),
            Refusal::StoreError(e) => e.to_string(),
            Refusal::Account(r) => format!("account {}: {}", r.user_id(), r.reason()),
            Refusal::MfaConflict => "TOTP required, connection has jit = false (deny)".into(),
        }
    }

    fn result(&self) -> LoginResult {
        match self {
            Refusal::StateInvalid(_) => LoginResult::StateInvalid,
            Refusal::IdpError(_) => LoginResult::IdpError,
            Refusal::TokenInvalid(_) => LoginResult::TokenInvalid,
            Refusal::ExchangeFailed(_) => LoginResult::ExchangeFailed,
            Refusal::StoreError(_) => LoginResult::StoreError,
            Refusal::Account(_) | Refusal::MfaConflict => LoginResult::AccountRefused,
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Refusal::StateInvalid(_) => StatusCode::BAD_REQUEST,
            Refusal::IdpError(code) if is_sign_in_refused(code) => StatusCode::FORBIDDEN,
            Refusal::IdpError(_) => StatusCode::BAD_REQUEST,
            Refusal::TokenInvalid(_) => StatusCode::UNAUTHORIZED,
            Refusal::ExchangeFailed(_) => StatusCode::BAD_GATEWAY,
            Refusal::StoreError(_) => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::Account(_) | Refusal::MfaConflict => StatusCode::FORBIDDEN,
        }
    }

    fn message(&self) -> String {
        match self {
            Refusal::StateInvalid(why) => (*why).to_string(),
            Refusal::IdpError(code) if code == "access_denied" => {
                "Sign-in was cancelled or refused.".into()
            }
            Refusal::IdpError(code) if is_sign_in_refused(code) => {
                "The identity provider needs you to sign in again.".into()
            }
            Refusal::IdpError(code) => {
                format!("The identity provider answered with an error ({code}).")
            }
            Refusal::TokenInvalid(_) => {
                "The identity provider's answer could not be verified.".into()
            }
            Refusal::ExchangeFailed(_) => {
                "The sign-in could not be completed with the identity provider.".into()
            }
            Refusal::StoreError(_) => "The sign-in could not be saved. Please try again.".into(),
            Refusal::Account(crate::identity::jit::JitRefusal::Disabled { .. }) => {
                "This account is disabled. Ask an administrator to enable it.".into()
            }
            Refusal::Account(crate::identity::jit::JitRefusal::UnverifiedEmail { .. }) => {
                "An account with this email address already exists, and the identity provider \
                 has not verified the address, so this sign-in cannot be linked to it. Verify \
                 the address at the identity provider, or ask an administrator."
                    .into()
            }
            Refusal::MfaConflict => super::mfa::CONFLICT_MESSAGE.into(),
        }
    }
}

/// IdP error codes that mean the user or the IdP declined, rather than a broken request.
fn is_sign_in_refused(code: &str) -> bool {
    matches!(
        code,
        "access_denied" | "login_required" | "interaction_required" | "consent_required"
    )
}

/// `/oauth2/callback`: checks the state against its login cookie (once only), the IdP's `error`
/// and `iss`, exchanges the code with the PKCE verifier, verifies the ID token, and issues a
/// new session. Every refusal is counted, logged, and answered with a page and the login
/// cookie cleared.
async fn callback(
    auth: &AuthView,
    session: &mut Session,
    pairs: &[(String, String)],
    request_id: &str,
) -> pingora::Result<()> {
    let started = Instant::now();
    // First of all: the state must be one Gatehouse could have issued. Nothing (no cookie
    // name, no header) is built from it before.
    let raw_state = param(pairs, "state").unwrap_or("");
    let Some(state) = IssuedState::parse(raw_state) else {
        auth.metrics.login("-", LoginResult::StateInvalid);
        let shown: String = raw_state.chars().take(64).collect();
        tracing::warn!(state = ?shown, state_len = raw_state.len(), "login refused: malformed state");
        let body = html! {
            (templates::para("This sign-in link is invalid or has expired."))
            (templates::sign_in_again())
        };
        return html(
            session,
            StatusCode::BAD_REQUEST,
            "Sign-in failed",
            body,
            vec![],
        )
        .await;
    };
    let cookie_name = login_cookie_name(auth, state);
    let mut cookies =
        vec![auth
            .sessions
            .set_cookie_header(&cookie_name, "", Some(paths::CALLBACK), 0)];
    let mut connection = "-".to_string();
    match finish_login(
        auth,
        session,
        pairs,
        &cookie_name,
        &mut connection,
        request_id,
    )
    .await
    {
        Ok((session_cookies, rd)) => {
            auth.update_sessions_gauge();
            auth.metrics.login(&connection, LoginResult::Success);
            auth.metrics
                .login_duration(&connection)
                .observe(started.elapsed().as_secs_f64());
            cookies.extend(session_cookies);
            let target = safe_rd(auth, session, Some(&rd));
            redirect(session, &target, cookies).await
        }
        Err(refusal) => {
            let result = refusal.result();
            auth.metrics.login(&connection, result);
            tracing::warn!(request_id, connection = %Escaped(&connection), result = result.as_str(), detail = %Escaped(refusal.detail()), "login refused");
            let body = html! {
                (templates::para(&refusal.message()))
                (templates::request_id(request_id))
                @match refusal {
                    Refusal::MfaConflict => (super::mfa::local_sign_ins(auth, "/")),
                    _ => (templates::sign_in_again()),
                }
            };
            let extra = cookies.into_iter().map(|c| (SET_COOKIE, c)).collect();
            html(session, refusal.status(), "Sign-in failed", body, extra).await
        }
    }
}

/// The checks and the exchange of a callback. Sets `connection` as soon as it is known (for
/// the metric); returns the session cookies and the `rd` to go to.
async fn finish_login(
    auth: &AuthView,
    session: &Session,
    pairs: &[(String, String)],
    cookie_name: &str,
    connection: &mut String,
    request_id: &str,
) -> Result<(Vec<String>, String), Refusal> {
    let state = param(pairs, "state").unwrap_or("");
    let login: LoginState = request_cookies(&session.req_header().headers)
        .find(|(k, _)| *k == cookie_name)
        .filter(|_| IssuedState::parse(state).is_some())
        .and_then(|(_, sealed)| auth.sessions.sealer().open(LOGIN_PURPOSE, sealed).ok())
        .and_then(|plain| serde_json::from_slice(&plain).ok())
        .filter(|l: &LoginState| l.state == state && l.exp > auth.clock.now())
        .ok_or(Refusal::StateInvalid(
            "This sign-in link is invalid or has expired.",
        ))?;
    let provider = auth
        .provider(&login.conn)
        .cloned()
        .ok_or(Refusal::StateInvalid(
            "This sign-in method is no longer offered. Please sign in again.",
        ))?;
    *connection = login.conn.clone();
    if !auth
        .use_state(&login.state, login.exp)
        .await
        .map_err(Refusal::StoreError)?
    {
        return Err(Refusal::StateInvalid("This sign-in link was already used."));
    }
    // RFC 9207: an `iss` that is sent must be the issuer, whatever the answer.
    if let (Some(iss), Some(expected)) = (param(pairs, "iss"), provider.issuer()) {
        if !crate::auth::bearer::issuer_is(&expected, iss) {
            return Err(Refusal::StateInvalid(
                "The answer came from an unexpected issuer.",
            ));
        }
    }
    if let Some(error) = param(pairs, "error") {
        return Err(Refusal::IdpError(error.to_string()));
    }
    // ... and a code must come with it when the IdP's metadata promises it (mix-up defence).
    if param(pairs, "iss").is_none() && provider.iss_parameter_required() {
        return Err(Refusal::StateInvalid(
            "The answer lacks the issuer the identity provider promised to send.",
        ));
    }
    let code = param(pairs, "code")
        .filter(|c| !c.is_empty())
        .ok_or(Refusal::StateInvalid("The answer has no code."))?;
    let result = provider
        .exchange(
            code,
            &login.verifier,
            &login.nonce,
            &login.redirect_uri,
            session
                .req_header()
                .headers
                .get(crate::ids::TRACEPARENT_NAME)
                .and_then(|v| v.to_str().ok()),
        )
        .await
        .map_err(|e| match e {
            OidcError::TokenInvalid(_) => Refusal::TokenInvalid(e),
            other => Refusal::ExchangeFailed(other),
        })?;
    // No fixation: any session the browser brought is ended, and a new id is issued.
    let old_sid = match auth.sessions.lookup(&session.req_header().headers) {
        Lookup::Live(old) => Some(old.sid.clone()),
        _ => None,
    };
    let completed = complete_login_off_thread(
        auth,
        login.conn.clone(),
        result,
        old_sid,
        request_id.to_string(),
        login.rd.clone(),
    )
    .await
    .map_err(|e| match e {
        LoginFailure::Store(e) => Refusal::StoreError(e),
        LoginFailure::Refused(r) => Refusal::Account(r),
        LoginFailure::MfaConflict => Refusal::MfaConflict,
    })?;
    Ok(match completed {
        Completed::Session(cookies) => (cookies, login.rd),
        Completed::NeedsMfa(sealed) => (
            vec![super::mfa::pending_cookie(auth, &sealed)],
            paths::MFA.to_string(),
        ),
    })
}

/// `/oauth2/sign_out`: GET shows a confirmation form; POST (with the form's token, bound to
/// this session) revokes the session, clears the cookie, and goes to the IdP's end-session
/// endpoint when it has one.
async fn sign_out(
    auth: &AuthView,
    session: &mut Session,
    pairs: &[(String, String)],
) -> pingora::Result<()> {
    let rd = safe_rd(auth, session, param(pairs, "rd"));
    let live = match auth.sessions.lookup(&session.req_header().headers) {
        Lookup::Live(s) => Some(s),
        _ => None,
    };
    let clear = auth.sessions.clear_cookies(&session.req_header().headers);
    let Some(live) = live else {
        return redirect(session, &rd, clear).await;
    };
    if session.req_header().method != http::Method::POST {
        let token = auth
            .sessions
            .sealer()
            .seal(SIGN_OUT_PURPOSE, live.sid.as_bytes());
        let body = html! {
            form method="post" action=(paths::SIGN_OUT) {
                input type="hidden" name="csrf" value=(token);
                input type="hidden" name="rd" value=(rd);
                button class="button" type="submit" id="sign-out" { "Sign out" }
            }
        };
        return html(session, StatusCode::OK, "Sign out?", body, vec![]).await;
    }
    let form = read_form(session).await?;
    let token_ok = param(&form, "csrf")
        .and_then(|t| auth.sessions.sealer().open(SIGN_OUT_PURPOSE, t).ok())
        .is_some_and(|sid| sid == live.sid.as_bytes());
    if !token_ok {
        return html(
            session,
            StatusCode::FORBIDDEN,
            "Sign-out refused",
            templates::para("The sign-out form was not valid. Please try again."),
            vec![],
        )
        .await;
    }
    let rd = safe_rd(auth, session, param(&form, "rd"));
    let provider = auth.provider(&live.identity.connection);
    let end_session = provider
        .and_then(|p| p.current())
        .and_then(|d| d.end_session_endpoint.clone());
    // The `id_token_hint` comes from the store (memory keeps no tokens), read before the
    // record is deleted. A store that does not answer does not keep the user signed in: the
    // redirect goes without the hint (the IdP then asks the user to confirm).
    let id_token = match end_session {
        Some(_) => match auth.sessions.tokens(&live.sid).await {
            Ok(tokens) => tokens.and_then(|t| t.id_token),
            Err(e) => {
                auth.metrics.store_error(crate::metrics::StoreOp::Read);
                tracing::warn!(error = %Escaped(&e), "cannot read the session's ID token for the sign-out; signing out without id_token_hint");
                None
            }
        },
        None => None,
    };
    auth.sessions
        .revoke_durably(std::slice::from_ref(&live.sid))
        .await;
    auth.update_sessions_gauge();
    auth.metrics.logouts(LogoutKind::User, 1);
    let location = match end_session {
        Some(endpoint) => {
            let post_logout = if rd.starts_with('/') {
                format!("{}{rd}", external_base(auth, session))
            } else {
                rd
            };
            let mut url = format!(
                "{endpoint}{}post_logout_redirect_uri={}",
                if endpoint.contains('?') { '&' } else { '?' },
                encode(&post_logout)
            );
            if let Some(hint) = id_token {
                url.push_str("&id_token_hint=");
                url.push_str(&encode(&hint));
            }
            if let Some(p) = provider {
                url.push_str("&client_id=");
                url.push_str(&encode(&p.connection.client_id));
            }
            url
        }
        None => rd,
    };
    redirect(session, &location, clear).await
}

/// A plain-text forward-auth answer with extra headers.
async fn forward_answer(
    session: &mut Session,
    status: StatusCode,
    text: &'static str,
    extra: &[(HeaderName, String)],
) -> pingora::Result<()> {
    respond::send(
        session,
        status,
        "text/plain; charset=utf-8",
        Bytes::from_static(text.as_bytes()),
        extra,
    )
    .await
}

/// A 401 that tells the front proxy where to send a browser (`Location`, which nginx reads
/// with `auth_request_set` and Caddy with `handle_response`); API clients get no `Location`.
fn browser_location(
    forwarded: &crate::auth::forward::Forwarded,
    headers: &http::HeaderMap,
    to: &str,
) -> Option<(HeaderName, String)> {
    respond::is_browser(&forwarded.method, headers)
        .then(|| (LOCATION, paths::with_rd(to, &forwarded.return_to())))
}

/// `/oauth2/auth`: forward-auth for nginx `auth_request`, Traefik `forwardAuth` and Caddy
/// `forward_auth`. Checks the request the front proxy is serving (see [`crate::auth::forward`]):
/// 403 unless the caller is a trusted proxy, 400 when the URI or method headers are missing
/// or disagree; then 202 with the identity headers when the session or bearer token is valid,
/// the `[[access]]` rules for the forwarded method and path pass (403 when they do not) and
/// the route's second factor is done (401 with `Location: /oauth2/mfa?rd=...` when not);
/// else 401 (with `Location: /oauth2/start?rd=...` for a browser).
async fn forward_auth(
    auth: &AuthView,
    session: &mut Session,
    request_id: &str,
) -> pingora::Result<()> {
    let peer = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip());
    let forwarded = match crate::auth::forward::read(
        &auth.forward_auth,
        &auth.headers.trusted_proxies,
        peer,
        &session.req_header().headers,
    ) {
        Ok(forwarded) => forwarded,
        Err(refusal) => {
            tracing::warn!(request_id, reason = %Escaped(&refusal), "forward-auth request refused");
            auth.metrics.forward_auth_refused(refusal.label());
            let error = crate::error::RequestError::from(refusal);
            return respond::error(session, &error, request_id).await;
        }
    };
    if auth.store_offline() {
        let error = crate::error::RequestError::StoreUnavailable;
        return respond::error(session, &error, request_id).await;
    }
    let who = match auth.authenticate(&session.req_header().headers).await {
        Ok(Some(who)) => who,
        Err(crate::auth::AuthError::StoreUnavailable) => {
            let error = crate::error::RequestError::StoreUnavailable;
            return respond::error(session, &error, request_id).await;
        }
        outcome => {
            let challenge = match outcome {
                Err(_) => "Bearer error=\"invalid_token\"",
                _ => "Bearer realm=\"gatehouse\"",
            };
            let mut extra = vec![(http::header::WWW_AUTHENTICATE, challenge.to_string())];
            extra.extend(browser_location(
                &forwarded,
                &session.req_header().headers,
                paths::START,
            ));
            return forward_answer(session, StatusCode::UNAUTHORIZED, "Unauthorized\n", &extra)
                .await;
        }
    };
    let id = who.identity();
    let path = &forwarded.path;
    let trusted = id.email_verified || auth.trusts_email(&id.connection);
    let path_rules = auth.path_rules();
    if let Err(refused) = path_rules.check(None, &forwarded.method, path, id, trusted) {
        let rule = refused.rule.label();
        auth.metrics.access_denied(rule);
        let rule = rule.as_str();
        tracing::info!(request_id, user = id.user(), rule, method = %forwarded.method, path = ?path, "forward-auth: access denied");
        return forward_answer(session, StatusCode::FORBIDDEN, "Forbidden\n", &[]).await;
    }
    let level = path_rules
        .mfa_level(usize::MAX, &forwarded.method, path)
        .unwrap_or_else(|| auth.default_mfa_level(&id.connection));
    let decision = auth.mfa_decision(&who, level);
    if let crate::auth::Authenticated::Bearer(identity, _) = &who {
        // A token cannot step up: it passes only when its acr/amr show a second factor.
        if decision != crate::mfa::policy::MfaDecision::Pass {
            tracing::info!(request_id, connection = %identity.connection, path = ?path, "forward-auth: bearer token without a second factor on a route that requires one");
            let challenge = "Bearer error=\"insufficient_user_authentication\", error_description=\"A second factor is required\"";
            let extra = [(http::header::WWW_AUTHENTICATE, challenge.to_string())];
            return forward_answer(session, StatusCode::UNAUTHORIZED, "Unauthorized\n", &extra)
                .await;
        }
    }
    if let crate::auth::Authenticated::Session(live) = &who {
        match decision {
            crate::mfa::policy::MfaDecision::Pass => {}
            crate::mfa::policy::MfaDecision::Conflict => {
                auth.metrics.mfa_conflict(&live.identity.connection);
                tracing::info!(request_id, connection = %live.identity.connection, path = ?path, "forward-auth: TOTP required but the connection keeps no local account: refused");
                return forward_answer(session, StatusCode::FORBIDDEN, "Forbidden\n", &[]).await;
            }
            crate::mfa::policy::MfaDecision::Challenge => {
                tracing::info!(
                    request_id,
                    user = id.user(),
                    path = ?path,
                    "forward-auth: second factor needed (step-up)"
                );
                let extra: Vec<_> =
                    browser_location(&forwarded, &session.req_header().headers, paths::MFA)
                        .into_iter()
                        .collect();
                return forward_answer(session, StatusCode::UNAUTHORIZED, "Unauthorized\n", &extra)
                    .await;
            }
        }
    }
    let headers = auth
        .identity_headers(who.identity())
        .into_iter()
        .filter_map(|(n, v)| v.to_str().ok().map(|v| (n, v.to_string())))
        .collect::<Vec<_>>();
    forward_answer(session, StatusCode::ACCEPTED, "OK\n", &headers).await
}

/// `POST /oauth2/backchannel-logout`: the IdP ends sessions by `sid` (or all of a user's by
/// `sub`). Answers 200, or 400 for a token that does not check out.
async fn backchannel_logout(auth: &AuthView, session: &mut Session) -> pingora::Result<()> {
    let no_store = [(http::header::CACHE_CONTROL, "no-store".to_string())];
    if session.req_header().method != http::Method::POST {
        return respond::send(
            session,
            StatusCode::METHOD_NOT_ALLOWED,
            "application/json",
            Bytes::from_static(b"{\"error\":\"method_not_allowed\"}"),
            &no_store,
        )
        .await;
    }
    let form = read_form(session).await?;
    let Some(token) = param(&form, "logout_token") else {
        return respond::send(
            session,
            StatusCode::BAD_REQUEST,
            "application/json",
            Bytes::from_static(b"{\"error\":\"invalid_request\"}"),
            &no_store,
        )
        .await;
    };
    let at = auth.clock.now();
    match auth
        .logout
        .verify(&auth.settings.providers, token, at)
        .await
    {
        Ok(order) => {
            let connection = order.connection.clone();
            let matching = match (&order.sid, &order.sub) {
                (Some(sid), sub) => auth
                    .sessions
                    .find_sessions(SessionsOf::IdpSession {
                        connection: &connection,
                        sid,
                    })
                    .into_iter()
                    .filter(|s| sub.as_ref().is_none_or(|sub| &s.identity.subject == sub))
                    .collect(),
                (None, Some(subject)) => auth.sessions.find_sessions(SessionsOf::Subject {
                    connection: &connection,
                    subject,
                }),
                (None, None) => Vec::new(),
            };
            // The subject's bearer tokens issued before now are refused from here on.
            let mut subjects: std::collections::BTreeSet<String> = matching
                .iter()
                .map(|s| s.identity.subject.clone())
                .collect();
            subjects.extend(order.sub.clone());
            for subject in &subjects {
                auth.bearer.logged_out(&connection, subject, at);
            }
            let sids: Vec<String> = matching.iter().map(|s| s.sid.clone()).collect();
            let ended = auth.sessions.revoke_durably(&sids).await;
            // With a shared store, the sessions other replicas made end there too.
            let owner = match (&order.sid, &order.sub) {
                (Some(sid), _) => Some(crate::store::sessions::SessionOwner::IdpSession {
                    connection: connection.clone(),
                    idp_sid: sid.clone(),
                }),
                (None, Some(subject)) => Some(crate::store::sessions::SessionOwner::Subject {
                    connection: connection.clone(),
                    subject: subject.clone(),
                }),
                (None, None) => None,
            };
            if let Some(owner) = owner {
                auth.sessions.end_stored(owner).await;
            }
            auth.update_sessions_gauge();
            auth.metrics.logouts(LogoutKind::Backchannel, ended);
            tracing::info!(connection = %Escaped(&connection), ended, "back-channel logout");
            respond::send(
                session,
                StatusCode::OK,
                "application/json",
                Bytes::from_static(b"{}"),
                &no_store,
            )
            .await
        }
        Err(reason) => {
            tracing::warn!(reason = ?reason, "logout token refused");
            respond::send(
                session,
                StatusCode::BAD_REQUEST,
                "application/json",
                Bytes::from_static(b"{\"error\":\"invalid_request\"}"),
                &no_store,
            )
            .await
        }
    }
}

/// `/oauth2/userinfo`: the session's identity as JSON, or 401.
async fn userinfo(auth: &AuthView, session: &mut Session) -> pingora::Result<()> {
    match auth.sessions.lookup(&session.req_header().headers) {
        Lookup::Live(live) => {
            let id = &live.identity;
            let body = serde_json::json!({
                "user": id.user(),
                "email": id.email,
                "email_verified": id.email_verified,
                "preferred_username": id.username,
                "name": id.name,
                "groups": id.groups,
                "connection": id.connection,
                "subject": id.subject,
            });
            respond::send(
                session,
                StatusCode::OK,
                "application/json",
                Bytes::from(body.to_string()),
                &[],
            )
            .await
        }
        _ => {
            let extra = [(
                http::header::WWW_AUTHENTICATE,
                "Bearer realm=\"gatehouse\"".to_string(),
            )];
            respond::send(
                session,
                StatusCode::UNAUTHORIZED,
                "application/json",
                Bytes::from_static(b"{\"error\":\"unauthorized\"}"),
                &extra,
            )
            .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::*;

    /// A state as Gatehouse issues it.
    fn issued() -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&crate::seal::random_key()[..16])
    }

    #[test]
    fn issued_states_are_accepted() {
        for _ in 0..100 {
            let state = issued();
            assert_eq!(
                IssuedState::parse(&state).map(|s| s.as_str()),
                Some(state.as_str())
            );
        }
        let real = openidconnect::CsrfToken::new_random();
        assert!(IssuedState::parse(real.secret()).is_some());
    }

    #[test]
    fn the_reported_hostile_states_are_refused() {
        for raw in [
            "",
            "\0",
            "x=1; Domain=evil.co",
            "x%3D1%3B%20Domain%3Devil.co",
            "AAAAAAAAAAAAAAAAAAAAAAA",
            "AAAAAAAAAAAAAAAAAAAAA",
            "AAAAAAAAAAAAAAAAAAAAA=",
            "AAAAAAAAAAAAAAAAAAAA==",
            "AAAAAAAAAAAAAAAAAAAAAB",
            "AAAAAAAAAAAAAAAAAAAA+/",
            "AAAAAAAAAAAAAAAAAAAA\r\n",
            "AAAAAAAAAAAAAAAAAAAA;A",
            "ÀAAAAAAAAAAAAAAAAAAAA",
        ] {
            assert!(IssuedState::parse(raw).is_none(), "{raw:?}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(10_000))]

        /// Any string is accepted only if it is 22 base64url characters that decode
        /// canonically to 16 bytes: so nothing that could end a cookie name or add an
        /// attribute (`=`, `;`, space, controls, non-ASCII) ever passes.
        #[test]
        fn only_the_issued_form_of_state_passes(raw in prop_oneof![
            ".*",
            "[A-Za-z0-9_=;%+/ \\-]{0,30}",
            "[A-Za-z0-9_-]{20,24}",
            "[A-Za-z0-9_-]{21}[A-Za-z0-9_=;\x00-\x1f\u{80}-\u{10ffff}-]",
        ]) {
            use base64::Engine;
            let expected = raw.len() == STATE_LEN
                && base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(&raw)
                    .is_ok_and(|b| b.len() == 16 && base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&b) == raw);
            let parsed = IssuedState::parse(&raw);
            prop_assert_eq!(parsed.is_some(), expected);
            if parsed.is_some() {
                prop_assert!(raw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            }
        }
    }
}
