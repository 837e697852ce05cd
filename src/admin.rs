//! The admin listener (a separate address, by default loopback only): `/metrics` in Prometheus
//! text format, `/ping`, `/live` (the process serves), `/ready` (see [`crate::health`]), and the users API (`POST /api/users`, a
//! [`crate::users::ops::UserOp`] as JSON, with `Authorization: Bearer <[admin] token>`), which
//! `gatehouse users` uses while the server holds the store.

use std::sync::Arc;

use async_trait::async_trait;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::auth::Auth;
use crate::config::model::Secret;
use crate::conns::Deadlined;
use crate::health::Readiness;
use crate::metrics::Metrics;
use crate::reload::Reloader;
use crate::users::ops::{execute, Effect, OpError, UserOp};

/// Where the admin listener takes a config reload.
pub const RELOAD_PATH: &str = "/api/reload";

/// The largest users-API request body.
const MAX_OP_BODY: usize = 64 * 1024;

pub struct AdminApp {
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    /// The users API: the store (through the login machinery) and the token that opens it.
    users: Option<(Arc<Auth>, Secret)>,
    /// `POST /api/reload`: the config reloader and the token that opens it.
    reload: Option<(Arc<Reloader>, Secret)>,
}

impl AdminApp {
    pub fn new(
        metrics: Arc<Metrics>,
        readiness: Arc<Readiness>,
        users: Option<(Arc<Auth>, Secret)>,
        reload: Option<(Arc<Reloader>, Secret)>,
    ) -> Self {
        Self {
            metrics,
            readiness,
            users,
            reload,
        }
    }

    /// `POST /api/reload`: checks the token, reads the config file again (on the blocking
    /// pool), answers what was applied and what needs a restart, or every problem of a file
    /// that was refused (422; the old config keeps serving).
    async fn reload_api(&self, session: &ServerSession) -> Response<Vec<u8>> {
        let json = "application/json";
        let Some((reloader, token)) = &self.reload else {
            return reply(
                StatusCode::NOT_FOUND,
                json,
                br#"{"error":"reload over the API is off: set [admin] token"}"#.to_vec(),
            );
        };
        if session.req_header().method != http::Method::POST {
            return reply(StatusCode::METHOD_NOT_ALLOWED, json, b"{}".to_vec());
        }
        if !token_matches(bearer(session), &token.0) {
            tracing::warn!("admin API: refused a reload with a wrong or missing token");
            return reply(
                StatusCode::UNAUTHORIZED,
                json,
                br#"{"error":"wrong or missing admin token"}"#.to_vec(),
            );
        }
        let reloader = reloader.clone();
        match tokio::task::spawn_blocking(move || reloader.reload()).await {
            Ok(Ok(done)) => reply(
                StatusCode::OK,
                json,
                serde_json::to_vec(&done).unwrap_or_default(),
            ),
            Ok(Err(refused)) => reply(
                StatusCode::UNPROCESSABLE_ENTITY,
                json,
                serde_json::to_vec(&refused).unwrap_or_default(),
            ),
            Err(e) => reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                json,
                serde_json::to_vec(&serde_json::json!({ "error": e.to_string() }))
                    .unwrap_or_default(),
            ),
        }
    }

    /// `POST /api/users`: checks the token, runs the operation on the blocking pool, applies
    /// its effect to the live sessions, answers JSON.
    async fn users_api(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let json = "application/json";
        let Some((auth, token)) = &self.users else {
            return reply(
                StatusCode::NOT_FOUND,
                json,
                error_json(&OpError::Remote(
                    "the users API is off: set [admin] token".into(),
                )),
            );
        };
        if session.req_header().method != http::Method::POST {
            return reply(StatusCode::METHOD_NOT_ALLOWED, json, b"{}".to_vec());
        }
        if !token_matches(bearer(session), &token.0) {
            tracing::warn!("admin API: refused a request with a wrong or missing token");
            return reply(
                StatusCode::UNAUTHORIZED,
                json,
                error_json(&OpError::Remote("wrong or missing admin token".into())),
            );
        }
        let mut body = Vec::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) if body.len() + chunk.len() <= MAX_OP_BODY => {
                    body.extend_from_slice(&chunk)
                }
                Ok(None) => break,
                Ok(Some(_)) | Err(_) => {
                    return reply(
                        StatusCode::BAD_REQUEST,
                        json,
                        error_json(&OpError::Invalid("unreadable or too large body".into())),
                    )
                }
            }
        }
        let op: UserOp = match serde_json::from_slice(&body) {
            Ok(op) => op,
            Err(e) => {
                return reply(
                    StatusCode::BAD_REQUEST,
                    json,
                    error_json(&OpError::Invalid(format!("not an operation: {e}"))),
                )
            }
        };
        let runner = Arc::clone(auth);
        let outcome = tokio::task::spawn_blocking(move || {
            execute(&runner.store, &op, runner.clock.now()).map(|(out, effect)| {
                apply_live(&runner, &effect);
                out
            })
        })
        .await
        .unwrap_or_else(|e| Err(OpError::Store(format!("the operation failed: {e}"))));
        match outcome {
            Ok(output) => reply(
                StatusCode::OK,
                json,
                serde_json::to_vec(&output).unwrap_or_default(),
            ),
            Err(e) => {
                let status = match &e {
                    OpError::NotFound(_) => StatusCode::NOT_FOUND,
                    OpError::Invalid(_) => StatusCode::BAD_REQUEST,
                    OpError::Store(_) | OpError::Remote(_) => {
                        auth.metrics.store_error(crate::metrics::StoreOp::Admin);
                        StatusCode::INTERNAL_SERVER_ERROR
                    }
                };
                reply(status, json, error_json(&e))
            }
        }
    }
}

/// The bearer token of an admin API request ("" without one).
fn bearer(session: &ServerSession) -> &str {
    session
        .req_header()
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
}

fn error_json(e: &OpError) -> Vec<u8> {
    serde_json::to_vec(e).unwrap_or_default()
}

/// Constant-time comparison of the presented token with the configured one.
fn token_matches(presented: &str, expected: &str) -> bool {
    use subtle::ConstantTimeEq;
    !expected.is_empty() && bool::from(presented.as_bytes().ct_eq(expected.as_bytes()))
}

/// What an account change means for the live sessions: ended, or given the new profile.
fn apply_live(auth: &Auth, effect: &Effect) {
    match effect {
        Effect::None => {}
        Effect::EndSessions(ids) => {
            let ended: usize = ids.iter().map(|id| auth.sessions.revoke_user(id)).sum();
            tracing::info!(
                accounts = ids.len(),
                sessions = ended,
                "admin: sessions ended"
            );
        }
        Effect::Refresh(user) => {
            let profile = user.clone();
            auth.sessions.update_user(&user.id, move |old| {
                crate::identity::jit::profile_identity(&profile, old)
            });
        }
    }
    auth.update_sessions_gauge();
    if let Ok(count) = auth.store.read(|tx| tx.user_count()) {
        auth.metrics.users.set(count as i64);
    }
}

fn reply(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let len = body.len();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    if let Ok(v) = content_type.parse() {
        headers.insert(CONTENT_TYPE, v);
    }
    headers.insert(CONTENT_LENGTH, len.into());
    response
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let deadlined = session.stream().and_then(Deadlined::of);
        if let Some(d) = deadlined {
            d.request_started();
        }
        let response = self.route(session).await;
        // The response is ready (it is written next): the idle time starts now.
        if let Some(d) = session.stream().and_then(Deadlined::of) {
            d.request_finished();
        }
        response
    }
}

impl AdminApp {
    async fn route(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_string();
        let text = "text/plain; charset=utf-8";
        match path.as_str() {
            crate::users::cli::API_PATH => self.users_api(session).await,
            RELOAD_PATH => self.reload_api(session).await,
            "/metrics" => {
                self.metrics.set_ready(self.readiness.is_ready());
                reply(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    self.metrics.render(),
                )
            }
            // Liveness: answered while the process serves at all, draining or not, whatever
            // the IdPs and the store do; a failure means restart the process.
            "/ping" | "/live" => reply(StatusCode::OK, text, b"OK\n".to_vec()),
            "/ready" if self.readiness.is_ready() => reply(StatusCode::OK, text, b"OK\n".to_vec()),
            "/ready" => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                text,
                b"not ready\n".to_vec(),
            ),
            _ => reply(StatusCode::NOT_FOUND, text, b"not found\n".to_vec()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_token_opens_the_api() {
        assert!(token_matches("0123456789abcdef", "0123456789abcdef"));
        assert!(!token_matches("0123456789abcdeF", "0123456789abcdef"));
        assert!(!token_matches("", "0123456789abcdef"));
        assert!(!token_matches("", ""));
    }
}
