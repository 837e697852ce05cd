//! Background work of the login machinery. Discovery: each connection's metadata and keys are
//! fetched at startup, retried with backoff until the IdP answers; a login attempt meanwhile
//! runs discovery itself (rate-limited, `Provider::discover_on_demand`) and wakes the retry
//! loop when it succeeds. Gatehouse serves public routes and existing sessions meanwhile; with
//! `[server] ready_requires_idp`, `/ready` stays false until every connection is discovered.
//! A config reload sends the connections it adds (or replaces with another issuer) through
//! [`DiscoveryQueue`]; a connection it removes is retired and its loop stops.

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
    /// Connections a config reload added, discovered like those of the start.
    pub added: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Arc<Provider>>>>,
}

/// Where a config reload hands its new connections to [`Discovery`]; each one counts as
/// undiscovered for readiness until its discovery succeeds or it is retired.
#[derive(Clone)]
pub struct DiscoveryQueue {
    sender: tokio::sync::mpsc::UnboundedSender<Arc<Provider>>,
    readiness: Arc<Readiness>,
}

impl DiscoveryQueue {
    /// The queue and the receiving end for [`Discovery::added`].
    pub fn new(
        readiness: Arc<Readiness>,
    ) -> (Self, tokio::sync::mpsc::UnboundedReceiver<Arc<Provider>>) {
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        (Self { sender, readiness }, receiver)
    }

    /// Discovers `provider` in the background (the loop ends when it is retired).
    pub fn discover(&self, provider: Arc<Provider>) {
        self.readiness.expect_more_idps(1);
        if self.sender.send(provider).is_err() {
            tracing::error!("the discovery service has ended: a connection added by reload is discovered only on a login attempt");
        }
    }
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
        if provider.is_retired() {
            // Removed or replaced by a config reload before this loop saw it discovered: no
            // longer awaited (and no metric for it).
            readiness.idp_discovered();
            tracing::info!(connection = %id, "discovery stopped: the connection was removed or replaced");
            return;
        }
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
        let spawn = |p: &Arc<Provider>| {
            tokio::spawn(discover_until_done(
                p.clone(),
                self.readiness.clone(),
                self.metrics.clone(),
            ))
        };
        let mut tasks: Vec<_> = self.providers.iter().map(spawn).collect();
        let added = self.added.lock().ok().and_then(|mut a| a.take());
        let Some(mut added) = added else {
            let _ = shutdown.changed().await;
            tasks.iter().for_each(|t| t.abort());
            return;
        };
        loop {
            tokio::select! {
                next = added.recv() => match next {
                    Some(p) => {
                        tasks.retain(|t| !t.is_finished());
                        tasks.push(spawn(&p));
                    }
                    None => {
                        let _ = shutdown.changed().await;
                        break;
                    }
                },
                _ = shutdown.changed() => break,
            }
        }
        tasks.iter().for_each(|t| t.abort());
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection whose IdP does not answer (a port nobody listens on).
    fn unreachable_provider() -> Arc<Provider> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let text = format!(
            "[session]\nkeys = [\"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\"]\n\
             [[upstreams]]\nurl = \"http://127.0.0.1:8080\"\n\
             [[connections]]\nid = \"gone\"\ndisplay_name = \"Gone\"\n\
             issuer = \"http://127.0.0.1:{port}\"\nclient_id = \"x\"\nclient_secret = \"y\"\n"
        );
        let config = crate::config::parse(&text).unwrap();
        let connection = config.connections[0].clone();
        Arc::new(Provider::new(connection, crate::clock::Clock::system()).unwrap())
    }

    /// A connection a reload removes while its IdP is still undiscovered stops its retry
    /// loop, and readiness (with `ready_requires_idp`) no longer waits for it; it is never
    /// reported up.
    #[tokio::test]
    async fn a_retired_connection_stops_its_discovery_and_is_no_longer_awaited() {
        let provider = unreachable_provider();
        let readiness = Arc::new(Readiness::default());
        readiness.set_serving();
        readiness.require_idps(true);
        readiness.expect_idps(1);
        let metrics = crate::metrics::Metrics::new().unwrap().auth.clone();
        let task = tokio::spawn(discover_until_done(
            provider.clone(),
            readiness.clone(),
            metrics.clone(),
        ));
        assert!(!readiness.is_ready(), "waits for the undiscovered IdP");
        provider.retire();
        // Bounded: a loop that ignored the retirement would retry for ever.
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("the loop ends once retired")
            .unwrap();
        assert!(readiness.is_ready());
        assert!(provider.current().is_none());
    }
}
