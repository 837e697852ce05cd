//! The proxy pipeline: pingora's [`ProxyHttp`] phases, in the order a request meets them.
//!
//! ```text
//! early_request_filter  count the request in flight; client deadlines for this request
//! request_filter        the named steps in `steps`: request id -> Host check (400) -> scrub
//!                       headers and forwarding -> normalize and route (own endpoints answered)
//!                       -> upstream (404) -> public | protected: session or bearer token,
//!                       access rules, second factor, identity headers; else 401 / 302 to login
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
pub mod routes;
mod steps;

use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use http::header::HOST;
use http::StatusCode;
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType, Result};

use crate::auth::Auth;
use crate::clock::Clock;
use crate::config::model::{ClientLimits, MfaLevel};
use crate::config::Config;
use crate::conns::Deadlined;
use crate::error::RequestError;
use crate::health::Readiness;
use crate::identity::access::AccessPolicy;
use crate::identity::assertion::AssertionSigner;
use crate::identity::signed_header::SignedHeader;
use crate::logging::{access_line, AccessLine, Escaped};
use crate::metrics::{ClientError, Metrics, TimeoutKind, UpstreamError};
/// Path and host checks live in [`crate::uri`]; re-exported for the phases below.
pub use crate::uri::{host, path};
use crate::web::{respond, BodyTimeout, Theme};
pub use ctx::RequestCtx;
use forwarded::Forwarding;
use hygiene::HeaderHygiene;
use path::{NormalPath, PathError, PathOptions};
use request_id::RequestIds;
use resolve::{PeerSlot, UpstreamPeers};
use routes::Router;

/// The proxy service: everything that lives across requests, built once at startup.
pub struct Gatehouse {
    /// What a config reload may change; each request takes the current one once.
    routing: Arc<ArcSwap<Routing>>,
    hygiene: HeaderHygiene,
    forwarding: Forwarding,
    ids: RequestIds,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    access_log: bool,
    /// The login machinery; `None` when no connection is configured.
    auth: Option<Arc<Auth>>,
    /// Client deadlines (`[server] client_*`).
    clients: ClientLimits,
}

/// The parts of the proxy a config reload replaces (upstreams, `[[public]]` and `[[access]]`
/// rules, path strictness, page branding, and the login settings: connections, `[login]`,
/// `[mfa]`), built from one config. A request takes one
/// `Arc<Routing>` when it starts ([`RequestCtx::routing`]), so it is served by the old config
/// or by the new one, never by a mix.
pub struct Routing {
    router: Router,
    /// One peer slot per upstream, in the router's order; the DNS refresher swaps a slot's
    /// peer when its host name resolves elsewhere.
    peers: Vec<Option<PeerSlot>>,
    /// Who may reach which upstream and path once signed in.
    access: AccessPolicy,
    /// The signed identity header; `None` when turned off.
    signed: Option<SignedHeader>,
    /// Whether a second factor is asked for anywhere (else the per-request check is skipped).
    mfa_anywhere: bool,
    /// How strict path normalization is (`[server] reject_double_encoding`).
    path_options: PathOptions,
    /// `[pages]`: the branding of every page Gatehouse writes, put in each request's
    /// extensions (see [`Theme::of`]).
    theme: Theme,
    /// The login machinery's reloadable settings (connections, `[login]`, `[mfa]`), from the
    /// same config: a request sees the connections and policy its routing was built with.
    auth: Option<Arc<crate::auth::Settings>>,
}

impl Routing {
    /// `peers` holds the resolved peer of every upstream in `config`; `signer` and `clock`
    /// make the signed identity header (with `config.identity.signing` set); `auth` is the
    /// login machinery's settings built from the same config.
    pub fn new(
        config: &Config,
        peers: &UpstreamPeers,
        signer: Option<Arc<AssertionSigner>>,
        clock: Option<Clock>,
        auth: Option<Arc<crate::auth::Settings>>,
    ) -> Self {
        let router = Router::new(config.public.clone(), config.upstreams.clone());
        // Every upstream of the config has a slot; one without (a caller's mistake) answers 500.
        let peers = router
            .upstreams()
            .iter()
            .map(|u| peers.get(&u.id))
            .collect();
        let access = AccessPolicy::new(router.upstreams(), config.access.clone());
        let signed = match (signer, &config.identity.signing, clock) {
            (Some(signer), Some(signing), Some(clock)) => Some(SignedHeader::new(
                signer,
                signing,
                router.upstreams(),
                clock,
            )),
            _ => None,
        };
        let mfa_anywhere = config.mfa.level() != MfaLevel::Off
            || config
                .connections
                .iter()
                .any(|c| c.mfa.is_some_and(|m| m != MfaLevel::Off))
            || config.upstreams.iter().any(|u| u.mfa.is_some())
            || config.access.iter().any(|a| a.mfa.is_some());
        Self {
            router,
            peers,
            access,
            signed,
            mfa_anywhere,
            path_options: PathOptions {
                reject_double_encoding: config.server.reject_double_encoding,
            },
            theme: Theme(Arc::new(config.pages.clone())),
            auth,
        }
    }
}

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
        let clock = auth.as_ref().map(|a| a.clock.clone());
        let settings = auth.as_ref().map(|a| a.settings());
        let routing = Routing::new(config, peers, signer, clock, settings);
        Self {
            routing: Arc::new(ArcSwap::from_pointee(routing)),
            clients: config.server.clients,
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

    /// Where a config reload puts the new [`Routing`].
    pub fn routing_slot(&self) -> Arc<ArcSwap<Routing>> {
        self.routing.clone()
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
fn upstream_reason(e: &Error) -> (UpstreamError, bool) {
    match e.etype() {
        ErrorType::ConnectRefused => (UpstreamError::ConnectRefused, false),
        ErrorType::ConnectTimedout => (UpstreamError::ConnectTimeout, true),
        ErrorType::ReadTimedout => (UpstreamError::ReadTimeout, true),
        ErrorType::WriteTimedout => (UpstreamError::WriteTimeout, true),
        ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError => {
            (UpstreamError::Reset, false)
        }
        ErrorType::TLSHandshakeFailure
        | ErrorType::TLSHandshakeTimedout
        | ErrorType::InvalidCert => (UpstreamError::Tls, false),
        _ => (UpstreamError::Other, false),
    }
}

#[async_trait]
impl ProxyHttp for Gatehouse {
    type CTX = RequestCtx;

    /// A fresh context per request.
    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new(self.routing.load_full())
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
        // HTTP/2 body reads are not timed by `set_read_timeout` (vendor/pingora-proxy patch).
        session.set_h2_request_body_timeout(Some(self.clients.body_timeout));
        session.set_write_timeout(Some(self.clients.write_timeout));
        session
            .req_header_mut()
            .extensions_mut()
            .insert(BodyTimeout(self.clients.body_timeout));
        session
            .req_header_mut()
            .extensions_mut()
            .insert(ctx.routing.theme.clone());
        Ok(())
    }

    /// The whole inbound pipeline. Returns `Ok(true)` when Gatehouse has written the response
    /// itself (every early answer below says so), `Ok(false)` to proxy the request upstream.
    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        // Each step lets the request go on or answers it itself (see `steps`).
        self.name_request(session, ctx);
        if self.check_host(session, ctx).await?.answered() {
            return Ok(true);
        }
        let authority = self.scrub_headers(session, ctx);
        if self.route(session, ctx).await?.answered() {
            return Ok(true);
        }
        if self
            .pick_upstream(session, ctx, authority.as_deref())
            .await?
            .answered()
        {
            return Ok(true);
        }
        Ok(self.authenticate(session, ctx).await?.answered())
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
            .and_then(|i| ctx.routing.peers.get(i)?.as_ref())
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
        if let Some(u) = ctx
            .upstream
            .and_then(|i| ctx.routing.router.upstreams().get(i))
        {
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
                    &Theme::of(session),
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
                tracing::warn!(request_id = %ctx.request_id, reason = reason.as_str(), error = %Escaped(e), "upstream failed");
                if timeout {
                    RequestError::UpstreamTimeout(reason.as_str())
                } else {
                    RequestError::UpstreamUnavailable(reason.as_str())
                }
            }
            (ErrorSource::Downstream, ErrorType::ReadTimedout) => {
                // The request body stalled: 408, a client matter.
                self.metrics.conns.timeout(TimeoutKind::Body);
                self.metrics.conns.client_error(ClientError::BodyTimeout);
                RequestError::ClientTimeout
            }
            (ErrorSource::Downstream, ErrorType::ReadError | ErrorType::ConnectionClosed)
                if session.response_written().is_none() =>
            {
                // The request body ended early: 400 (if anybody still listens).
                self.metrics.conns.client_error(ClientError::BodyAborted);
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
                self.metrics.conns.timeout(TimeoutKind::Write);
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
                .and_then(|i| ctx.routing.router.upstreams().get(i))
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
                trace_id: &ctx.trace_id,
                user: ctx.user.as_deref(),
                error: ctx
                    .upstream_error
                    .map(UpstreamError::as_str)
                    .or(e.map(|_| "error")),
            });
        }
    }
}
