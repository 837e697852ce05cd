//! The per-request state carried through the pipeline phases (pingora's CTX). A fresh one is
//! made for every request; anything that outlives a request lives on [`super::Gatehouse`].

use std::net::IpAddr;
use std::time::Instant;

use super::routes::Route;
use crate::uri::path::NormalPath;

pub struct RequestCtx {
    pub started: Instant,
    /// Set once the in-flight gauge was raised, so `logging` lowers it exactly once.
    pub counted: bool,
    pub route: Option<Route>,
    pub path: Option<NormalPath>,
    /// Index into the service's upstream table.
    pub upstream: Option<usize>,
    pub client: Option<IpAddr>,
    pub request_id: String,
    /// The W3C trace id of the request's `traceparent` (kept or made in `scrub_headers`).
    pub trace_id: String,
    /// The bounded reason label when the upstream failed.
    pub upstream_error: Option<crate::metrics::UpstreamError>,
    /// Who the request is from, once authenticated (for the access log).
    pub user: Option<String>,
    /// The session the request was let through with: its body and any upgraded connection
    /// (WebSocket) stop when the session ends.
    pub session: Option<std::sync::Arc<crate::auth::session::LiveSession>>,
    /// The routing this request is served with, taken once when it starts: a config reload
    /// in between is seen by the next request, never half-way through this one.
    pub routing: std::sync::Arc<super::Routing>,
}

impl RequestCtx {
    pub fn new(routing: std::sync::Arc<super::Routing>) -> Self {
        Self {
            routing,
            started: Instant::now(),
            counted: false,
            route: None,
            path: None,
            upstream: None,
            client: None,
            request_id: String::new(),
            trace_id: String::new(),
            upstream_error: None,
            user: None,
            session: None,
        }
    }

    /// The `kind` label for metrics; a request refused before classification counts as
    /// protected, the kind every unknown request is treated as.
    pub fn kind(&self) -> crate::metrics::RouteKind {
        self.route
            .map_or(crate::metrics::RouteKind::Protected, Route::kind)
    }
}
