//! The steps of `request_filter`, in the order a request meets them. Each step is a method
//! of [`Gatehouse`] that either lets the request go on ([`Flow::Continue`]) or has written
//! the answer itself ([`Flow::Answered`]):
//!
//! 1. [`Gatehouse::name_request`]: keep a sane `X-Request-Id` or make one.
//! 2. [`Gatehouse::check_host`]: 400 without a usable `Host`.
//! 3. [`Gatehouse::scrub_headers`]: remove identity headers and `Connection` tokens a client
//!    may not send; the forwarding headers; the request id upstream.
//! 4. [`Gatehouse::route`]: normalize the path (400 for hostile spellings), classify it, and
//!    answer Gatehouse's own routes (`/ping`, `/ready`, the JWKS, `/oauth2/*`).
//! 5. [`Gatehouse::pick_upstream`]: the upstream for host and path (404 without one).
//! 6. [`Gatehouse::authenticate`]: public routes go on; protected ones need a session or a
//!    bearer token that passes the access rules and the second factor, and get the identity
//!    headers; otherwise 401 (API) or a redirect to sign in (browser).

use bytes::Bytes;
use http::header::HOST;
use http::{HeaderValue, StatusCode, Uri};
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};

use super::forwarded::Peer;
use super::path::{self, NormalPath, PathError, PathOptions};
use super::routes::Route;
use super::{target, Gatehouse, RequestCtx};
use crate::auth::session::TokensUnavailable;
use crate::auth::{Auth, AuthError, AuthView, Authenticated};
use crate::conns::Deadlined;
use crate::error::RequestError;
use crate::headers::{wire, HeaderEdit, X_REQUEST_ID};
use crate::logging::{Escaped, Redacted};
use crate::metrics::SpoofKind;
use crate::mfa::policy::MfaDecision;
use crate::web::{endpoints, paths, respond, Theme};

/// What a step of `request_filter` decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Flow {
    /// The request goes on to the next step (and in the end, to the upstream).
    Continue,
    /// Gatehouse has written the response; the request goes no further.
    Answered,
}

impl Flow {
    pub fn answered(self) -> bool {
        self == Flow::Answered
    }
}

impl Gatehouse {
    /// Step 1: the request id, kept from the client when it is sane, else made here.
    pub(super) fn name_request(&self, session: &Session, ctx: &mut RequestCtx) {
        ctx.request_id = self
            .ids
            .for_request(session.req_header().headers.get(X_REQUEST_ID));
    }

    /// Step 2: 400 for a request without a usable `Host` (HTTP/1.1 and h2 must name one, and
    /// nothing can be routed or built on a malformed one).
    pub(super) async fn check_host(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Flow> {
        let req = session.req_header();
        match crate::uri::host::check(req.version, &req.uri, &req.headers) {
            Ok(()) => Ok(Flow::Continue),
            Err(e) => {
                self.metrics.conns.client_error(e.reason());
                self.answer_error(session, ctx, e.into()).await
            }
        }
    }

    /// Step 3: removes the identity headers a client may not send and the `Connection` tokens
    /// naming them (before pingora's hop-by-hop handling, which would otherwise remove what
    /// Gatehouse sets later), sets the forwarding headers (trusted only from
    /// `trusted_proxies`) and the request id. Returns the target's authority (absolute-form
    /// and h2), which the upstream choice falls back on.
    pub(super) fn scrub_headers(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Option<String> {
        let peer = Peer {
            addr: session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip()),
            tls: session.digest().is_some_and(|d| d.ssl_digest.is_some()),
        };
        let authority = session
            .req_header()
            .uri
            .authority()
            .map(|a| a.as_str().to_string());
        let req = session.req_header_mut();
        let stripped = self.hygiene.strip(req);
        if stripped > 0 {
            self.metrics.spoofed(SpoofKind::Header, stripped);
            tracing::info!(request_id = %ctx.request_id, count = stripped, "removed incoming identity headers");
        }
        let tokens = self.hygiene.clean_connection(req);
        if tokens > 0 {
            self.metrics.spoofed(SpoofKind::ConnectionToken, tokens);
            tracing::info!(request_id = %ctx.request_id, count = tokens, "removed Connection tokens naming Gatehouse's headers");
        }
        ctx.client = self.forwarding.apply(req, peer, authority.as_deref());
        if let Some(ip) = ctx.client {
            req.extensions_mut().insert(crate::web::ClientIp(ip));
        }
        if let Ok(id) = HeaderValue::from_str(&ctx.request_id) {
            HeaderEdit::insert(req, wire::X_REQUEST_ID, id);
        }
        ctx.trace_id = trace_context(req);
        tracing::debug!(request_id = %ctx.request_id, headers = ?Redacted(&req.headers), "request");
        authority
    }

    /// Step 4: normalizes the path once (400 for a path that cannot be checked safely),
    /// classifies the request, and answers Gatehouse's own routes: `/ping`, `/ready`, the
    /// identity header's JWKS and the login endpoints.
    pub(super) async fn route(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<Flow> {
        let options = ctx.routing.path_options;
        let path = match Self::normalize_target(session, options) {
            Ok(path) => path,
            Err(e) => return self.answer_error(session, ctx, e).await,
        };
        let route = ctx
            .routing
            .router
            .classify(&session.req_header().method, &path);
        ctx.route = Some(route);
        ctx.path = Some(path);
        match route {
            Route::Ping => self.answer_text(session, StatusCode::OK, "OK\n").await,
            Route::Ready if self.readiness.is_ready() => {
                self.answer_text(session, StatusCode::OK, "OK\n").await
            }
            Route::Ready => {
                self.answer_text(session, StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                    .await
            }
            Route::Jwks => {
                let routing = ctx.routing.clone();
                let Some(signed) = &routing.signed else {
                    return self
                        .answer_error(session, ctx, RequestError::NotFound)
                        .await;
                };
                respond::send(
                    session,
                    StatusCode::OK,
                    "application/json",
                    Bytes::copy_from_slice(signed.jwks_json().as_bytes()),
                    &[],
                )
                .await?;
                Ok(Flow::Answered)
            }
            Route::Auth => {
                let Some(auth) = &self.auth else {
                    return self
                        .answer_error(session, ctx, RequestError::NotFound)
                        .await;
                };
                let path = ctx
                    .path
                    .as_ref()
                    .map(|p| p.match_form().to_string())
                    .unwrap_or_default();
                // The login endpoints always write their own response.
                let auth = self.auth_view(auth, ctx);
                endpoints::handle(&auth, session, &path, &ctx.request_id, ctx.client).await?;
                Ok(Flow::Answered)
            }
            Route::Public | Route::Protected => Ok(Flow::Continue),
        }
    }

    /// Step 5: the upstream configured for this host and path (most specific first); 404
    /// when none is.
    pub(super) async fn pick_upstream(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        authority: Option<&str>,
    ) -> Result<Flow> {
        let host = session
            .req_header()
            .headers
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .or(authority);
        let path = ctx
            .path
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "path unset"))?;
        ctx.upstream = ctx.routing.router.upstream_index(host, path);
        if ctx.upstream.is_some() {
            return Ok(Flow::Continue);
        }
        self.answer_error(session, ctx, RequestError::NoUpstream)
            .await
    }

    /// The login machinery with this request's settings (taken with its routing).
    fn auth_view(&self, auth: &std::sync::Arc<Auth>, ctx: &RequestCtx) -> AuthView {
        match &ctx.routing.auth {
            Some(settings) => auth.with_settings(settings.clone()),
            None => auth.view(),
        }
    }

    /// Step 6: a public route goes on without Gatehouse's cookies. A protected one needs a
    /// live session or a valid bearer token ([`Self::admit`]); a refused bearer token gets
    /// 401 `invalid_token`; no credential at all gets 401 (API) or a redirect to sign in
    /// (browser).
    pub(super) async fn authenticate(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Flow> {
        if ctx.route == Some(Route::Public) {
            self.strip_own_cookies(session)?;
            return Ok(Flow::Continue);
        }
        if let Some(auth) = &self.auth {
            let auth = self.auth_view(auth, ctx);
            if auth.store_offline() {
                tracing::warn!("request refused: the shared store has not answered for longer than store.offline_grace");
                return self
                    .answer_error(session, ctx, RequestError::StoreUnavailable)
                    .await;
            }
            match auth.authenticate(&session.req_header().headers).await {
                Ok(Some(who)) => return self.admit(&auth, session, ctx, who).await,
                Ok(None) => {}
                Err(AuthError::StoreUnavailable) => {
                    return self
                        .answer_error(session, ctx, RequestError::StoreUnavailable)
                        .await;
                }
                Err(AuthError::Bearer(_)) => {
                    return refuse_bearer(
                        session,
                        ctx,
                        "Bearer error=\"invalid_token\"",
                        "The bearer token is not valid.",
                    )
                    .await;
                }
            }
        }
        let req = session.req_header();
        if !respond::is_browser(&req.method, &req.headers) {
            return self
                .answer_error(session, ctx, RequestError::Unauthenticated)
                .await;
        }
        let path = ctx
            .path
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "path unset"))?;
        let location = Self::return_to(session, path);
        respond::redirect(session, &location, Vec::new()).await?;
        Ok(Flow::Answered)
    }

    /// A signed-in request: the access rules (403), the second factor where the route asks
    /// for one (step-up, the conflict page, or 401 for a token), then the identity headers,
    /// the signed identity header, and Gatehouse's cookies removed. An upgraded connection
    /// (WebSocket) of a session closes when the session ends.
    async fn admit(
        &self,
        auth: &AuthView,
        session: &mut Session,
        ctx: &mut RequestCtx,
        who: Authenticated,
    ) -> Result<Flow> {
        if self
            .enforce_access(auth, session, ctx, who.identity())
            .await?
            .answered()
        {
            return Ok(Flow::Answered);
        }
        if ctx.routing.mfa_anywhere && self.enforce_mfa(auth, session, ctx, &who).await?.answered()
        {
            return Ok(Flow::Answered);
        }
        let tokens = match auth.token_headers(&who).await {
            Ok(tokens) => tokens,
            Err(unavailable) => {
                let error = match unavailable {
                    TokensUnavailable::Store(_) => RequestError::StoreUnavailable,
                    TokensUnavailable::Ended => RequestError::Unauthenticated,
                };
                return self.answer_error(session, ctx, error).await;
            }
        };
        let req = session.req_header_mut();
        for (name, value) in auth.wire_headers(&who).iter() {
            req.insert_header(name.clone(), value.clone())?;
        }
        for (name, value) in tokens.iter().flat_map(|t| t.headers()) {
            req.insert_header(name.clone(), value.clone())?;
        }
        let routing = ctx.routing.clone();
        if let (Some(signed), Some(upstream)) = (&routing.signed, ctx.upstream) {
            if let Some(value) = signed.value(upstream, who.identity(), who.assertion_cache()) {
                HeaderEdit::insert(req, wire::X_GATEHOUSE_IDENTITY, value);
            }
        }
        ctx.user = Some(who.identity().user().to_string());
        if let Authenticated::Session(live) = &who {
            if session.is_upgrade_req() {
                if let Some(conn) = session.stream().and_then(Deadlined::of) {
                    conn.close_when(live.ended_signal());
                }
            }
            ctx.session = Some(live.clone());
        }
        self.strip_own_cookies(session)?;
        Ok(Flow::Continue)
    }

    /// Normalizes the path and puts the normalized form in the request that goes upstream.
    pub(super) fn normalize_target(
        session: &mut Session,
        options: PathOptions,
    ) -> Result<NormalPath, RequestError> {
        let (raw_path, query) = target(session)?;
        let normal = path::normalize_with(&raw_path, options)?;
        if normal.as_str() != raw_path {
            let rebuilt = match &query {
                Some(q) => format!("{}?{q}", normal.as_str()),
                None => normal.as_str().to_string(),
            };
            let uri =
                Uri::try_from(rebuilt).map_err(|_| RequestError::BadPath(PathError::BadEscape))?;
            session.req_header_mut().set_uri(uri);
        }
        Ok(normal)
    }

    /// Removes Gatehouse's own cookies from the request before it goes upstream.
    pub(super) fn strip_own_cookies(&self, session: &mut Session) -> Result<()> {
        let Some(auth) = &self.auth else {
            return Ok(());
        };
        match auth
            .sessions
            .without_own_cookies(&session.req_header().headers)
        {
            Some(Some(rest)) => session
                .req_header_mut()
                .insert_header(http::header::COOKIE, rest)?,
            Some(None) => {
                session
                    .req_header_mut()
                    .remove_header(&http::header::COOKIE);
            }
            None => {}
        }
        Ok(())
    }

    /// The `rd` value (percent-encoded) that brings a browser back to this request: the
    /// normalized path and the original query.
    fn rd_param(session: &Session, path: &NormalPath) -> String {
        let query = session.req_header().uri.query();
        let mut rd = String::with_capacity(path.as_str().len() + query.map_or(0, |q| q.len() + 1));
        rd.push_str(path.as_str());
        if let Some(q) = query {
            rd.push('?');
            rd.push_str(q);
        }
        percent_encoding::utf8_percent_encode(&rd, percent_encoding::NON_ALPHANUMERIC).to_string()
    }

    /// The login redirect for this request.
    fn return_to(session: &Session, path: &NormalPath) -> String {
        format!("{}?rd={}", paths::START, Self::rd_param(session, path))
    }

    /// The second factor where the route asks for one ([`Auth::mfa_decision`]). A session
    /// that has not done it is sent to the second-factor page (step-up, then back to this
    /// route), or gets 401 when it is not a browser; a JIT-off session gets the conflict answer
    /// (`deny`). A bearer token cannot step up: 401 with `WWW-Authenticate: Bearer
    /// error="insufficient_user_authentication"` (RFC 9470).
    async fn enforce_mfa(
        &self,
        auth: &AuthView,
        session: &mut Session,
        ctx: &RequestCtx,
        who: &Authenticated,
    ) -> Result<Flow> {
        let (Some(upstream), Some(path)) = (ctx.upstream, ctx.path.as_ref()) else {
            return Ok(Flow::Continue);
        };
        let connection = &who.identity().connection;
        let level = ctx
            .routing
            .access
            .mfa_level(upstream, &session.req_header().method, path)
            .unwrap_or_else(|| auth.default_mfa_level(connection));
        let decision = auth.mfa_decision(who, level);
        if decision == MfaDecision::Pass {
            return Ok(Flow::Continue);
        }
        if let Authenticated::Bearer(..) = who {
            tracing::info!(request_id = %ctx.request_id, connection = %connection, "bearer token without a second factor on a route that requires one: refused");
            return refuse_bearer(
                session,
                ctx,
                "Bearer error=\"insufficient_user_authentication\", error_description=\"A second factor is required\"",
                "This route needs a token that shows a second factor.",
            )
            .await;
        }
        let browser =
            respond::is_browser(&session.req_header().method, &session.req_header().headers);
        let rd = Self::rd_param(session, path);
        if decision == MfaDecision::Conflict {
            auth.metrics.mfa_conflict(connection);
            tracing::info!(request_id = %ctx.request_id, connection = %connection, "a second factor is required but the connection keeps no local account: refused");
            let rd = percent_encoding::percent_decode_str(&rd).decode_utf8_lossy();
            crate::web::mfa::conflict(auth, session, &rd, &ctx.request_id, browser).await?;
            return Ok(Flow::Answered);
        }
        if browser {
            let location = format!("{}?rd={rd}", paths::MFA);
            respond::redirect(session, &location, Vec::new()).await?;
        } else {
            let (kind, body) = respond::error_body(
                &Theme::of(session),
                StatusCode::UNAUTHORIZED,
                "This route needs a second sign-in step: open it in a browser.",
                &ctx.request_id,
                false,
            );
            respond::send(session, StatusCode::UNAUTHORIZED, kind, body, &[]).await?;
        }
        Ok(Flow::Answered)
    }

    /// The access rules for a signed-in request. When refused, the 403 answer is written
    /// (with the sign-ins that could open the route) and counted.
    async fn enforce_access(
        &self,
        auth: &AuthView,
        session: &mut Session,
        ctx: &RequestCtx,
        identity: &crate::identity::Identity,
    ) -> Result<Flow> {
        let (Some(upstream), Some(path)) = (ctx.upstream, ctx.path.as_ref()) else {
            return Ok(Flow::Continue);
        };
        if ctx.routing.access.is_open() {
            return Ok(Flow::Continue);
        }
        let trusted = identity.email_verified || auth.trusts_email(&identity.connection);
        let method = &session.req_header().method;
        let Err(refused) =
            ctx.routing
                .access
                .check(Some(upstream), method, path, identity, trusted)
        else {
            return Ok(Flow::Continue);
        };
        auth.metrics.access_denied(refused.rule.label());
        tracing::info!(request_id = %ctx.request_id, user = identity.user(), rule = refused.rule.label().as_str(), "access denied");
        let rd = Self::rd_param(session, path);
        let rd = percent_encoding::percent_decode_str(&rd)
            .decode_utf8_lossy()
            .into_owned();
        let options: Vec<(String, String)> = auth
            .settings
            .providers
            .iter()
            .filter(|p| {
                refused.connections.is_empty() || refused.connections.contains(&p.connection.id)
            })
            .map(|p| (p.connection.id.clone(), p.connection.display_name.clone()))
            .collect();
        respond::access_denied(session, &ctx.request_id, &options, &rd).await?;
        Ok(Flow::Answered)
    }

    /// Answers a request with the page (or JSON) for `error`.
    async fn answer_error(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        error: RequestError,
    ) -> Result<Flow> {
        tracing::debug!(request_id = %ctx.request_id, error = %Escaped(&error), "answered by gatehouse");
        respond::error(session, &error, &ctx.request_id).await?;
        Ok(Flow::Answered)
    }

    async fn answer_text(
        &self,
        session: &mut Session,
        status: StatusCode,
        text: &'static str,
    ) -> Result<Flow> {
        respond::send(
            session,
            status,
            "text/plain; charset=utf-8",
            Bytes::from_static(text.as_bytes()),
            &[],
        )
        .await?;
        Ok(Flow::Answered)
    }
}

/// Answers a request whose bearer token is refused: 401 with `challenge` as
/// `WWW-Authenticate` (RFC 6750, RFC 9470) and `message` in the JSON body.
async fn refuse_bearer(
    session: &mut Session,
    ctx: &RequestCtx,
    challenge: &str,
    message: &str,
) -> Result<Flow> {
    let extra = [(http::header::WWW_AUTHENTICATE, challenge.to_string())];
    let (kind, body) = respond::error_body(
        &Theme::of(session),
        StatusCode::UNAUTHORIZED,
        message,
        &ctx.request_id,
        false,
    );
    respond::send(session, StatusCode::UNAUTHORIZED, kind, body, &extra).await?;
    Ok(Flow::Answered)
}

/// W3C trace context: one valid incoming `traceparent` is kept as it is; none, several, or an
/// invalid one is replaced by a new trace (and a `tracestate` that came with an invalid one
/// is dropped). The upstream gets it, and the IdP calls made for this request. Returns the
/// trace id for the access line.
fn trace_context(req: &mut pingora::http::RequestHeader) -> String {
    use crate::ids::{TraceParent, TRACEPARENT, TRACEPARENT_NAME, TRACESTATE};
    let mut incoming = req.headers.get_all(&TRACEPARENT_NAME).iter();
    let kept = match (incoming.next(), incoming.next()) {
        (Some(one), None) => one.to_str().ok().and_then(TraceParent::parse),
        _ => None,
    };
    let trace = match kept {
        Some(trace) => trace,
        None => {
            if req.headers.contains_key(&TRACEPARENT_NAME) {
                HeaderEdit::remove(req, &http::HeaderName::from_static(TRACESTATE));
            }
            let trace = TraceParent::generate();
            if let Ok(value) = HeaderValue::from_str(trace.as_str()) {
                HeaderEdit::insert(req, TRACEPARENT, value);
            }
            trace
        }
    };
    trace.trace_id().to_string()
}
