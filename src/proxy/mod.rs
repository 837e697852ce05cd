//! The proxy pipeline: pingora's [`ProxyHttp`] phases, in the order a request meets them.
//!
//! ```text
//! early_request_filter  count the request in flight; client deadlines for this request
//! request_filter        request id -> Host check (400) -> normalize path -> strip owned headers -> forwarding
//!                       headers -> classify route -> (internal endpoint | no upstream |
//!                       public | protected: session check, else 401 / 302 to login)
//! upstream_peer         the upstream picked in request_filter
//! upstream_request_filter  Host for the upstream
//! fail_to_proxy         502 / 504 page and the upstream error metric
//! logging               metrics and the access line, once per request
//! ```

pub mod ctx;
pub mod forwarded;
pub mod hygiene;
pub mod request_id;
pub mod resolve;
pub mod respond;
pub mod routes;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use http::header::HOST;
use http::{HeaderValue, StatusCode, Uri};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType, Result};

use crate::auth::endpoints;
use crate::auth::Auth;
use crate::config::model::{ClientLimits, MfaLevel};
use crate::config::Config;
use crate::conns::Deadlined;
use crate::error::RequestError;
use crate::headers::{wire, HeaderEdit, X_REQUEST_ID};
use crate::health::Readiness;
use crate::identity::access::AccessPolicy;
use crate::identity::assertion::AssertionSigner;
use crate::identity::signed_header::SignedHeader;
use crate::logging::{access_line, AccessLine, Escaped, Redacted};
use crate::metrics::Metrics;
use crate::mfa::policy::{decide, MfaDecision};
/// Path and host checks live in [`crate::uri`]; re-exported for the phases below.
pub use crate::uri::{host, path};
pub use ctx::RequestCtx;
use forwarded::{Forwarding, Peer};
use hygiene::HeaderHygiene;
use path::{NormalPath, PathError, PathOptions};
use request_id::RequestIds;
use resolve::{PeerSlot, UpstreamPeers};
use routes::{Route, Router};

/// The proxy service: everything that lives across requests, built once at startup.
pub struct Gatehouse {
    router: Router,
    /// One peer slot per upstream, in the router's order; the DNS refresher swaps a slot's
    /// peer when its host name resolves elsewhere.
    peers: Vec<Option<PeerSlot>>,
    hygiene: HeaderHygiene,
    forwarding: Forwarding,
    ids: RequestIds,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    access_log: bool,
    /// The login machinery; `None` when no connection is configured.
    auth: Option<Arc<Auth>>,
    /// Who may reach which upstream and path once signed in.
    access: AccessPolicy,
    /// The signed identity header; `None` when turned off.
    signed: Option<SignedHeader>,
    /// Whether TOTP is asked for anywhere (else the per-request MFA check is skipped).
    mfa_anywhere: bool,
    /// Client deadlines (`[server] client_*`).
    clients: ClientLimits,
    /// How strict path normalization is (`[server] reject_double_encoding`).
    path_options: PathOptions,
}

/// The client body deadline of a request, for Gatehouse's own endpoints that read a body
/// (kept in the request's extensions; pingora times HTTP/1 body reads itself, not h2 ones).
#[derive(Debug, Clone, Copy)]
pub struct BodyTimeout(pub std::time::Duration);

/// Splits the request target into its raw path and query.
fn target(session: &Session) -> Result<(String, Option<String>), PathError> {
    let req = session.req_header();
    let raw = req.raw_path();
    if raw.first() == Some(&b'/') {
        let raw = std::str::from_utf8(raw).map_err(|_| PathError::NotAscii)?;
        Ok(match raw.split_once('?') {
            Some((p, q)) => (p.to_string(), Some(q.to_string())),
            None => (raw.to_string(), None),
        })
    } else {
        // absolute-form (`GET http://host/x`) or h2: the parsed URI has the parts.
        Ok((
            req.uri.path().to_string(),
            req.uri.query().map(str::to_string),
        ))
    }
}

impl Gatehouse {
    /// `signer` signs the identity header (with `config.identity.signing` set); `peers` holds
    /// the resolved peer of every upstream in `config` (see [`resolve::resolve_at_start`]).
    pub fn new(
        config: &Config,
        metrics: Arc<Metrics>,
        readiness: Arc<Readiness>,
        auth: Option<Arc<Auth>>,
        signer: Option<Arc<AssertionSigner>>,
        peers: &UpstreamPeers,
    ) -> Self {
        let router = Router::new(config.public.clone(), config.upstreams.clone());
        // Every upstream of the config has a slot; one without (a caller's mistake) answers 500.
        let peers = router
            .upstreams()
            .iter()
            .map(|u| peers.get(&u.id))
            .collect();
        let access = AccessPolicy::new(router.upstreams(), config.access.clone());
        let signed = match (signer, &config.identity.signing) {
            (Some(signer), Some(signing)) => {
                Some(SignedHeader::new(signer, signing, router.upstreams()))
            }
            _ => None,
        };
        let mfa_anywhere = config.mfa.totp != MfaLevel::Off
            || config
                .connections
                .iter()
                .any(|c| c.mfa.is_some_and(|m| m != MfaLevel::Off))
            || config.upstreams.iter().any(|u| u.mfa.is_some())
            || config.access.iter().any(|a| a.mfa.is_some());
        Self {
            access,
            signed,
            mfa_anywhere,
            clients: config.server.clients,
            path_options: PathOptions {
                reject_double_encoding: config.server.reject_double_encoding,
            },
            router,
            peers,
            hygiene: HeaderHygiene::new(
                &config.headers.owned_names(),
                config.headers.strip_foreign_identity,
            ),
            forwarding: Forwarding::new(config.headers.trusted_proxies.clone()),
            ids: RequestIds::default(),
            metrics,
            readiness,
            access_log: config.log.access_log,
            auth,
        }
    }

    /// Normalizes the path and puts the normalized form in the request that goes upstream.
    fn normalize_target(&self, session: &mut Session) -> Result<NormalPath, RequestError> {
        let (raw_path, query) = target(session)?;
        let normal = path::normalize_with(&raw_path, self.path_options)?;
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
    fn strip_own_cookies(&self, session: &mut Session) -> Result<()> {
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
        format!(
            "{}/start?rd={}",
            routes::AUTH_PREFIX,
            Self::rd_param(session, path)
        )
    }

    /// The second factor for a signed-in session on a route that requires TOTP: passes when
    /// the session has done it; else a local account is sent to the TOTP form (step-up, then
    /// back to this route) and a JIT-off session gets the conflict answer (`deny`) or passes
    /// (`skip`). `Err` when the answer is written.
    async fn enforce_mfa(
        &self,
        auth: &Auth,
        session: &mut Session,
        ctx: &RequestCtx,
        live: &crate::auth::session::LiveSession,
    ) -> Result<std::result::Result<(), ()>> {
        let (Some(upstream), Some(path)) = (ctx.upstream, ctx.path.as_ref()) else {
            return Ok(Ok(()));
        };
        let method = &session.req_header().method;
        let level = self.mfa_level(auth, upstream, method, path, &live.identity.connection);
        let decision = decide(
            level,
            auth.mfa.config.when_no_local_account,
            live.identity.user_id.is_some(),
            false,
            live.mfa_done_at().is_some(),
        );
        if decision == MfaDecision::Pass {
            return Ok(Ok(()));
        }
        let browser = respond::is_browser(method, &session.req_header().headers);
        let rd = Self::rd_param(session, path);
        if decision == MfaDecision::Conflict {
            auth.metrics
                .mfa_conflicts
                .with_label_values(&[&live.identity.connection])
                .inc();
            tracing::info!(request_id = %ctx.request_id, connection = %live.identity.connection, "TOTP required but the connection keeps no local account: refused");
            let rd = percent_encoding::percent_decode_str(&rd).decode_utf8_lossy();
            crate::mfa::endpoints::conflict(auth, session, &rd, &ctx.request_id, browser).await?;
            return Ok(Err(()));
        }
        if browser {
            let location = format!("{}?rd={rd}", crate::mfa::endpoints::MFA_PATH);
            respond::redirect(session, &location).await?;
        } else {
            let (kind, body) = respond::error_body(
                StatusCode::UNAUTHORIZED,
                "This route needs a second sign-in step: open it in a browser.",
                &ctx.request_id,
                false,
            );
            respond::send(session, StatusCode::UNAUTHORIZED, kind, body, &[]).await?;
        }
        Ok(Err(()))
    }

    /// The TOTP level this route asks of a user of `connection`.
    fn mfa_level(
        &self,
        auth: &Auth,
        upstream: usize,
        method: &http::Method,
        path: &NormalPath,
        connection: &str,
    ) -> MfaLevel {
        self.access
            .mfa_level(upstream, method, path)
            .unwrap_or_else(|| match auth.provider(connection) {
                Some(p) => crate::mfa::policy::login_level(&auth.mfa.config, &p.connection),
                None => auth.mfa.config.totp,
            })
    }

    /// The second factor for a bearer token on a route that requires TOTP: a token cannot
    /// step up, so it passes only when its `acr`/`amr` show a second factor (see
    /// `crate::auth::bearer::factors`); else 401 with `WWW-Authenticate: Bearer
    /// error="insufficient_user_authentication"` (RFC 9470). A JIT-off connection with
    /// `when_no_local_account = "skip"` passes as sessions do. `Err` when the answer is written.
    async fn enforce_bearer_mfa(
        &self,
        auth: &Auth,
        session: &mut Session,
        ctx: &RequestCtx,
        identity: &crate::identity::Identity,
        factors: crate::auth::bearer::Factors,
    ) -> Result<std::result::Result<(), ()>> {
        let (Some(upstream), Some(path)) = (ctx.upstream, ctx.path.as_ref()) else {
            return Ok(Ok(()));
        };
        let method = &session.req_header().method;
        let level = self.mfa_level(auth, upstream, method, path, &identity.connection);
        let jit = auth
            .provider(&identity.connection)
            .is_some_and(|p| p.connection.jit);
        let decision = decide(
            level,
            auth.mfa.config.when_no_local_account,
            jit || identity.user_id.is_some(),
            false,
            factors == crate::auth::bearer::Factors::Two,
        );
        if decision == MfaDecision::Pass {
            return Ok(Ok(()));
        }
        tracing::info!(request_id = %ctx.request_id, connection = %identity.connection, "bearer token without a second factor on a route that requires one: refused");
        let extra = [(
            http::header::WWW_AUTHENTICATE,
            "Bearer error=\"insufficient_user_authentication\", error_description=\"A second factor is required\"".to_string(),
        )];
        let (kind, body) = respond::error_body(
            StatusCode::UNAUTHORIZED,
            "This route needs a token that shows a second factor.",
            &ctx.request_id,
            false,
        );
        respond::send(session, StatusCode::UNAUTHORIZED, kind, body, &extra).await?;
        Ok(Err(()))
    }

    /// The access rules for a signed-in request. `Err` when refused: the 403 answer is
    /// written (with the sign-ins that could open the route) and counted.
    async fn enforce_access(
        &self,
        auth: &Auth,
        session: &mut Session,
        ctx: &RequestCtx,
        identity: &crate::identity::Identity,
    ) -> Result<std::result::Result<(), ()>> {
        let (Some(upstream), Some(path)) = (ctx.upstream, ctx.path.as_ref()) else {
            return Ok(Ok(()));
        };
        if self.access.is_open() {
            return Ok(Ok(()));
        }
        let trusted = identity.email_verified || auth.trusts_email(&identity.connection);
        let method = &session.req_header().method;
        let Err(refused) = self
            .access
            .check(Some(upstream), method, path, identity, trusted)
        else {
            return Ok(Ok(()));
        };
        auth.metrics
            .access_denied
            .with_label_values(&[refused.rule.label()])
            .inc();
        tracing::info!(request_id = %ctx.request_id, user = identity.user(), rule = refused.rule.label(), "access denied");
        let rd = Self::rd_param(session, path);
        let options: Vec<(String, String)> = auth
            .providers
            .iter()
            .filter(|p| {
                refused.connections.is_empty() || refused.connections.contains(&p.connection.id)
            })
            .map(|p| {
                let id = percent_encoding::utf8_percent_encode(
                    &p.connection.id,
                    percent_encoding::NON_ALPHANUMERIC,
                );
                (
                    p.connection.display_name.clone(),
                    format!("{}/start?connection={id}&rd={rd}", routes::AUTH_PREFIX),
                )
            })
            .collect();
        respond::access_denied(session, &ctx.request_id, &options).await?;
        Ok(Err(()))
    }

    /// Answers a request Gatehouse serves itself. Returns `Ok(true)`: the response is written.
    async fn answer_error(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        error: RequestError,
    ) -> Result<bool> {
        tracing::debug!(request_id = %ctx.request_id, error = %Escaped(&error), "answered by gatehouse");
        respond::error(session, &error, &ctx.request_id).await?;
        Ok(true)
    }

    async fn answer_text(
        &self,
        session: &mut Session,
        status: StatusCode,
        text: &'static str,
    ) -> Result<bool> {
        respond::send(
            session,
            status,
            "text/plain; charset=utf-8",
            Bytes::from_static(text.as_bytes()),
            &[],
        )
        .await?;
        Ok(true)
    }
}

/// `Err` when the request's session has ended since it was let through.
fn refuse_ended_session(ctx: &RequestCtx) -> Result<()> {
    match &ctx.session {
        Some(live) if live.has_ended() => {
            tracing::info!(request_id = %ctx.request_id, "session ended: closing its open connection");
            Err(Error::explain(
                ErrorType::ConnectionClosed,
                "the session of this connection has ended",
            ))
        }
        _ => Ok(()),
    }
}

/// The bounded reason label for an upstream failure, and whether it was a timeout.
fn upstream_reason(e: &Error) -> (&'static str, bool) {
    match e.etype() {
        ErrorType::ConnectRefused => ("connect_refused", false),
        ErrorType::ConnectTimedout => ("connect_timeout", true),
        ErrorType::ReadTimedout => ("read_timeout", true),
        ErrorType::WriteTimedout => ("write_timeout", true),
        ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError => {
            ("reset", false)
        }
        ErrorType::TLSHandshakeFailure
        | ErrorType::TLSHandshakeTimedout
        | ErrorType::InvalidCert => ("tls", false),
        _ => ("other", false),
    }
}

#[async_trait]
impl ProxyHttp for Gatehouse {
    type CTX = RequestCtx;

    /// A fresh context per request.
    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new()
    }

    /// Counts the request in flight before anything can fail, and puts the request under
    /// the client deadlines: the head is in (the connection's head deadline stops), body
    /// reads and response writes are timed.
    async fn early_request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        self.metrics.request_started();
        ctx.counted = true;
        if let Some(conn) = session.stream().and_then(Deadlined::of) {
            conn.request_started();
        }
        session.set_read_timeout(Some(self.clients.body_timeout));
        session.set_write_timeout(Some(self.clients.write_timeout));
        session
            .req_header_mut()
            .extensions_mut()
            .insert(BodyTimeout(self.clients.body_timeout));
        Ok(())
    }

    /// The whole inbound pipeline. Returns `Ok(true)` when Gatehouse has written the response
    /// itself (every early answer below says so), `Ok(false)` to proxy the request upstream.
    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        ctx.request_id = self
            .ids
            .for_request(session.req_header().headers.get(X_REQUEST_ID));
        let req = session.req_header();
        if let Err(e) = host::check(req.version, &req.uri, &req.headers) {
            // Early answer: 400, no Host (HTTP/1.1) or one nothing can be routed or built on.
            self.metrics.conns.client_error(e.reason());
            return self.answer_error(session, ctx, e.into()).await;
        }

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
            self.metrics.spoofed("header", stripped);
            tracing::info!(request_id = %ctx.request_id, count = stripped, "removed incoming identity headers");
        }
        // Before pingora's hop-by-hop handling, which would remove what `Connection` names
        // after Gatehouse has set it.
        let tokens = self.hygiene.clean_connection(req);
        if tokens > 0 {
            self.metrics.spoofed("connection_token", tokens);
            tracing::info!(request_id = %ctx.request_id, count = tokens, "removed Connection tokens naming Gatehouse's headers");
        }
        ctx.client = self.forwarding.apply(req, peer, authority.as_deref());
        if let Ok(id) = HeaderValue::from_str(&ctx.request_id) {
            HeaderEdit::insert(req, wire::X_REQUEST_ID, id);
        }
        tracing::debug!(request_id = %ctx.request_id, headers = ?Redacted(&req.headers), "request");

        let path = match self.normalize_target(session) {
            Ok(path) => path,
            // Early answer: 400 for a path that cannot be checked safely.
            Err(e) => return self.answer_error(session, ctx, e).await,
        };
        let req = session.req_header();

        let route = self.router.classify(&req.method, &path);
        ctx.route = Some(route);
        ctx.path = Some(path);
        match route {
            // Early answer: liveness.
            Route::Ping => return self.answer_text(session, StatusCode::OK, "OK\n").await,
            // Early answer: readiness.
            Route::Ready if self.readiness.is_ready() => {
                return self.answer_text(session, StatusCode::OK, "OK\n").await
            }
            Route::Ready => {
                return self
                    .answer_text(session, StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                    .await
            }
            // Early answer: the public keys of the signed identity header.
            Route::Jwks => {
                let Some(signed) = &self.signed else {
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
                return Ok(true);
            }
            // Early answer: the login endpoints write their own responses.
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
                return endpoints::handle(auth, session, &path, &ctx.request_id, ctx.client).await;
            }
            Route::Public | Route::Protected => {}
        }

        let host = session
            .req_header()
            .headers
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .or(authority.as_deref());
        let path = ctx
            .path
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "path unset"))?;
        ctx.upstream = self.router.upstream_index(host, path);
        if ctx.upstream.is_none() {
            // Early answer: 404, nothing is configured for this host and path.
            return self
                .answer_error(session, ctx, RequestError::NoUpstream)
                .await;
        }

        if route == Route::Public {
            self.strip_own_cookies(session)?;
            return Ok(false);
        }
        // Protected: a live session or a valid bearer token lets the request through, with
        // the identity headers.
        if let Some(auth) = &self.auth {
            match auth.authenticate(&session.req_header().headers).await {
                Ok(Some(who)) => {
                    if self
                        .enforce_access(auth, session, ctx, who.identity())
                        .await?
                        .is_err()
                    {
                        // Early answer: 403, an access rule refused this account.
                        return Ok(true);
                    }
                    let refused = match (self.mfa_anywhere, &who) {
                        (true, crate::auth::Authenticated::Session(live)) => {
                            self.enforce_mfa(auth, session, ctx, live).await?.is_err()
                        }
                        (true, crate::auth::Authenticated::Bearer(identity, factors)) => self
                            .enforce_bearer_mfa(auth, session, ctx, identity, *factors)
                            .await?
                            .is_err(),
                        _ => false,
                    };
                    if refused {
                        // Early answer: to the TOTP form (step-up), the conflict page, or 401
                        // insufficient_user_authentication for a bearer token.
                        return Ok(true);
                    }
                    let req = session.req_header_mut();
                    for (name, value) in auth.wire_headers(&who).iter() {
                        req.insert_header(name.clone(), value.clone())?;
                    }
                    auth.token_headers(&who, req)?;
                    if let (Some(signed), Some(upstream)) = (&self.signed, ctx.upstream) {
                        if let Some(value) =
                            signed.value(upstream, who.identity(), who.assertion_cache())
                        {
                            HeaderEdit::insert(req, wire::X_GATEHOUSE_IDENTITY, value);
                        }
                    }
                    ctx.user = Some(who.identity().user().to_string());
                    if let crate::auth::Authenticated::Session(live) = &who {
                        // An upgraded connection outlives this request: it closes when the
                        // session ends, even when no frame moves.
                        if session.is_upgrade_req() {
                            if let Some(conn) = session.stream().and_then(Deadlined::of) {
                                conn.close_when(live.ended_signal());
                            }
                        }
                        ctx.session = Some(live.clone());
                    }
                    self.strip_own_cookies(session)?;
                    return Ok(false);
                }
                Ok(None) => {}
                Err(_) => {
                    // Early answer: a bearer token was presented and refused.
                    let extra = [(
                        http::header::WWW_AUTHENTICATE,
                        "Bearer error=\"invalid_token\"".to_string(),
                    )];
                    let (kind, body) = respond::error_body(
                        StatusCode::UNAUTHORIZED,
                        "The bearer token is not valid.",
                        &ctx.request_id,
                        false,
                    );
                    respond::send(session, StatusCode::UNAUTHORIZED, kind, body, &extra).await?;
                    return Ok(true);
                }
            }
        }
        // No session mechanism accepted the request.
        let req = session.req_header();
        if respond::is_browser(&req.method, &req.headers) {
            let location = Self::return_to(session, path);
            // Early answer: a browser is sent to log in.
            respond::redirect(session, &location).await?;
            Ok(true)
        } else {
            // Early answer: 401 for API clients.
            self.answer_error(session, ctx, RequestError::Unauthenticated)
                .await
        }
    }

    /// Stops a request body, or the client's side of an upgraded connection, once the
    /// session it came with has ended (an `Err` closes the connection).
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        refuse_ended_session(ctx)
    }

    /// Stops a response body, or the app's side of an upgraded connection, once the session
    /// has ended: a WebSocket of a signed-out user closes at its next frame either way.
    fn response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<std::time::Duration>> {
        refuse_ended_session(ctx)?;
        Ok(None)
    }

    /// The upstream that `request_filter` picked.
    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        // An atomic load: never waits for the DNS refresher.
        ctx.upstream
            .and_then(|i| self.peers.get(i)?.as_ref())
            .map(|slot| Box::new(HttpPeer::clone(&slot.load())))
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no upstream chosen"))
    }

    /// Sets `Host` to the upstream's own unless the upstream preserves the client's.
    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut pingora::http::RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(u) = ctx.upstream.and_then(|i| self.router.upstreams().get(i)) {
            if !u.preserve_host {
                upstream_request.insert_header(HOST, u.authority.as_str())?;
            }
        }
        Ok(())
    }

    /// Turns a failure into our own 502/504 page (never the upstream's internals) and counts
    /// upstream failures by reason.
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let error = match (e.esource(), e.etype()) {
            (_, ErrorType::HTTPStatus(code)) => {
                let code = *code;
                let status =
                    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let html = respond::is_browser(
                    &session.req_header().method,
                    &session.req_header().headers,
                );
                let (kind, body) = respond::error_body(
                    status,
                    "The request could not be handled.",
                    &ctx.request_id,
                    html,
                );
                let _ = respond::send(session, status, kind, body, &[]).await;
                return FailToProxy {
                    error_code: code,
                    can_reuse_downstream: false,
                };
            }
            (ErrorSource::Upstream, _) => {
                let (reason, timeout) = upstream_reason(e);
                ctx.upstream_error = Some(reason);
                self.metrics.upstream_error(reason);
                tracing::warn!(request_id = %ctx.request_id, reason, error = %Escaped(e), "upstream failed");
                if timeout {
                    RequestError::UpstreamTimeout(reason)
                } else {
                    RequestError::UpstreamUnavailable(reason)
                }
            }
            (ErrorSource::Downstream, ErrorType::ReadTimedout) => {
                // The request body stalled: 408, a client matter.
                self.metrics.conns.timeout("body");
                self.metrics.conns.client_error("body_timeout");
                RequestError::ClientTimeout
            }
            (ErrorSource::Downstream, ErrorType::ReadError | ErrorType::ConnectionClosed)
                if session.response_written().is_none() =>
            {
                // The request body ended early: 400 (if anybody still listens).
                self.metrics.conns.client_error("body_aborted");
                RequestError::BodyAborted
            }
            (
                ErrorSource::Downstream,
                ErrorType::WriteError
                | ErrorType::WriteTimedout
                | ErrorType::ReadError
                | ErrorType::ConnectionClosed,
            ) => {
                // The client went away or stopped reading: nobody to answer.
                return FailToProxy {
                    error_code: 0,
                    can_reuse_downstream: false,
                };
            }
            (ErrorSource::Downstream, _) => RequestError::BadRequest,
            _ => {
                tracing::error!(request_id = %ctx.request_id, error = %Escaped(e), "internal error");
                RequestError::Internal("proxy")
            }
        };
        let code = error.status().as_u16();
        if session.response_written().is_none() {
            if let Err(write_error) = respond::error(session, &error, &ctx.request_id).await {
                tracing::debug!(request_id = %ctx.request_id, error = %Escaped(&write_error), "could not write error page");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// A client's mistake or a client that went away is not a server fault: no ERROR line
    /// (the access line and the metrics still record it).
    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, error: &Error) -> bool {
        matches!(error.esource(), ErrorSource::Downstream)
            || matches!(error.etype(), ErrorType::HTTPStatus(code) if (400..500).contains(code))
    }

    /// Records the request metrics and writes the access line, once per request.
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        if let Some(conn) = session.stream().and_then(Deadlined::of) {
            conn.request_finished();
        }
        if let Some(e) = e {
            if e.esource() == &ErrorSource::Downstream && e.etype() == &ErrorType::WriteTimedout {
                // An h2 stream (or an HTTP/1 body) the client did not take in time.
                self.metrics.conns.timeout("write");
            }
        }
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let elapsed = ctx.started.elapsed();
        if ctx.counted {
            self.metrics.request_finished(ctx.kind(), status, elapsed);
        }
        if self.access_log {
            let upstream = ctx
                .upstream
                .and_then(|i| self.router.upstreams().get(i))
                .map(|u| u.id.as_str());
            access_line(&AccessLine {
                method: session.req_header().method.as_str(),
                path: ctx.path.as_ref().map_or("-", NormalPath::as_str),
                status,
                elapsed,
                kind: ctx.kind(),
                upstream,
                client: ctx.client,
                request_id: &ctx.request_id,
                user: ctx.user.as_deref(),
                error: ctx.upstream_error.or(e.map(|_| "error")),
            });
        }
    }
}
