//! The admin listener (a separate address, by default loopback only): `/metrics` in Prometheus
//! text format, `/ping` and `/ready`.

use std::sync::Arc;

use async_trait::async_trait;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::health::Readiness;
use crate::metrics::Metrics;

pub struct AdminApp {
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
}

impl AdminApp {
    pub fn new(metrics: Arc<Metrics>, readiness: Arc<Readiness>) -> Self {
        Self { metrics, readiness }
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
        let path = session.req_header().uri.path();
        let text = "text/plain; charset=utf-8";
        match path {
            "/metrics" => reply(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                self.metrics.render(),
            ),
            "/ping" => reply(StatusCode::OK, text, b"OK\n".to_vec()),
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
