//! Discovery in the background: each connection's metadata and keys are fetched at startup,
//! retried with backoff until the IdP answers. Gatehouse serves public routes and existing
//! sessions meanwhile; `/ready` stays false until every connection is discovered.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::oidc::Provider;
use crate::health::Readiness;
use crate::metrics::AuthMetrics;

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
        match provider.discover().await {
            Ok(()) => {
                metrics
                    .jwks_refresh
                    .with_label_values(&[&id, "success"])
                    .inc();
                metrics.idp_up.with_label_values(&[&id]).set(1);
                readiness.idp_discovered();
                tracing::info!(connection = %id, "identity provider discovered");
                return;
            }
            Err(e) => {
                metrics
                    .jwks_refresh
                    .with_label_values(&[&id, "failure"])
                    .inc();
                tracing::warn!(connection = %id, error = %e, retry_in_ms = wait.as_millis() as u64, "discovery failed");
                tokio::time::sleep(wait).await;
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
