//! Background work of the login machinery. Discovery: each connection's metadata and keys are
//! fetched at startup, retried with backoff until the IdP answers; a login attempt meanwhile
//! runs discovery itself (rate-limited, `Provider::discover_on_demand`) and wakes the retry
//! loop when it succeeds. Gatehouse serves public routes and existing sessions meanwhile; with
//! `[server] ready_requires_idp`, `/ready` stays false until every connection is discovered.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::oidc::Provider;
use crate::health::Readiness;
use crate::metrics::{AuthMetrics, FetchResult, LogoutKind};

pub struct Discovery {
    pub providers: Vec<Arc<Provider>>,
    pub readiness: Arc<Readiness>,
    pub metrics: AuthMetrics,
}

const FIRST_RETRY: Duration = Duration::from_millis(250);
const LONGEST_RETRY: Duration = Duration::from_secs(30);

async fn discover_until_done(
    provider: Arc<Provider>,
    readiness: Arc<Readiness>,
    metrics: AuthMetrics,
) {
    let id = provider.connection.id.clone();
    let mut wait = FIRST_RETRY;
    loop {
        // A login attempt may have discovered it meanwhile (`Provider::discover_on_demand`).
        let outcome = match provider.current() {
            Some(_) => Ok(()),
            None => provider.discover().await,
        };
        match outcome {
            Ok(()) => {
                metrics.fetch(&id, FetchResult::Success);
                metrics.idp_up(&id, true);
                readiness.idp_discovered();
                tracing::info!(connection = %id, "identity provider discovered");
                return;
            }
            Err(e) => {
                metrics.fetch(&id, FetchResult::Failure);
                tracing::warn!(connection = %id, error = %crate::text::Escaped(&e), retry_in_ms = wait.as_millis() as u64, "discovery failed");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = provider.discovered_elsewhere() => {}
                }
                wait = (wait * 2).min(LONGEST_RETRY);
            }
        }
    }
}

#[async_trait]
impl BackgroundService for Discovery {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let tasks: Vec<_> = self
            .providers
            .iter()
            .map(|p| {
                tokio::spawn(discover_until_done(
                    p.clone(),
                    self.readiness.clone(),
                    self.metrics.clone(),
                ))
            })
            .collect();
        tokio::select! {
            _ = futures_join(tasks) => {}
            _ = shutdown.changed() => {}
        }
    }
}

async fn futures_join(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}

/// Ends expired and idle sessions once a minute and keeps `gatehouse_sessions_active` true.
pub struct SessionSweeper {
    pub auth: Arc<super::Auth>,
}

const SWEEP_EVERY: Duration = Duration::from_secs(60);

#[async_trait]
impl BackgroundService for SessionSweeper {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(SWEEP_EVERY) => {}
                _ = shutdown.changed() => return,
            }
            let ended = self.auth.sessions.sweep();
            if ended > 0 {
                self.auth.metrics.logouts(LogoutKind::Expired, ended);
                tracing::info!(ended, "expired or idle sessions ended");
            }
            self.auth.update_sessions_gauge();
            self.auth.throttle.forget_idle();
        }
    }
}
