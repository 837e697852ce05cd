//! Two Gatehouse replicas on one real PostgreSQL database, in front of one echo app, signing
//! in at one real test IdP that knows both replicas' URLs. Browsers keep cookies per host,
//! not per port, so one browser's cookies reach both replicas, as behind a load balancer.
//! Include with `#[path = "common/replica_pair.rs"] mod replica_pair;` next to `mod common;`
//! and the `idp` module.

#![allow(dead_code)] // each test binary uses a part of this

use crate::common::{bind_gatehouse, start_echo, start_on_with_clock, Harness};
use crate::idp::{client_config, TestIdp};
use gatehouse::clock::Clock;
use serde_json::json;

/// The admin API token both replicas accept.
pub const ADMIN_TOKEN: &str = "replica-admin-token";

/// Two running replicas sharing the database at `url`.
pub struct ReplicaPair {
    pub idp: TestIdp,
    pub a: Harness,
    pub b: Harness,
    pub url: String,
    /// The clock both replicas read.
    pub clock: Clock,
    _data: (tempfile::TempDir, tempfile::TempDir),
}

impl ReplicaPair {
    pub fn each(&self) -> [&Harness; 2] {
        [&self.a, &self.b]
    }
}

/// How the pair is configured beyond what every replica test shares.
pub struct PairConfig<'a> {
    /// `[store] offline_grace`.
    pub offline_grace: &'a str,
    /// TOML appended after the `[[connections]]` table (more keys of it, or later tables).
    pub extra: &'a str,
    /// Whether the IdP sends back-channel logouts (to replica A).
    pub backchannel: bool,
    /// The clock both replicas read: the system clock, or a manual one tests move.
    pub clock: Clock,
}

impl Default for PairConfig<'_> {
    fn default() -> Self {
        PairConfig {
            offline_grace: "30s",
            extra: "",
            backchannel: false,
            clock: Clock::system(),
        }
    }
}

/// Starts two replicas on the database at `url` and waits until both are ready.
pub async fn start_pair(url: String, pair: PairConfig<'_>) -> ReplicaPair {
    let upstream = start_echo().await;
    let (listeners_a, listeners_b) = (bind_gatehouse(), bind_gatehouse());
    let bases: Vec<String> = [&listeners_a, &listeners_b]
        .iter()
        .map(|l| format!("http://{}", l.addresses().proxy[0]))
        .collect();
    let idp = TestIdp::start(json!({
        "clients": [client_config(
            "gatehouse",
            "gatehouse-secret",
            bases.iter().map(|b| format!("{b}/oauth2/callback")).collect(),
            bases.iter().map(|b| format!("{b}/")).collect(),
            pair.backchannel
                .then(|| format!("{}/oauth2/backchannel-logout", bases[0])),
        )],
    }))
    .await;
    let upstream_addr = upstream.addr;
    let config = |listeners: &gatehouse::server::Listeners, data: &tempfile::TempDir| {
        let bound = listeners.addresses();
        format!(
            r#"
[server]
listen = ["{proxy}"]
admin_listen = "{admin}"
worker_threads = 2
shutdown_grace = "1s"
[log]
access_log = false
[store]
backend = "postgres"
url = "{url}"
offline_grace = "{grace}"
data_dir = "{data}"
[session]
cookie_secure = false
keys = ["MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="]
[admin]
token = "{ADMIN_TOKEN}"
[limits]
login_per_minute = 0
[[upstreams]]
id = "echo"
url = "http://{upstream_addr}"
[[connections]]
id = "test"
display_name = "Test IdP"
issuer = "{issuer}"
client_id = "gatehouse"
client_secret = "gatehouse-secret"
scopes = ["openid", "email", "profile", "groups"]
{extra}
"#,
            proxy = bound.proxy[0],
            admin = bound.admin,
            grace = pair.offline_grace,
            data = data.path().display(),
            issuer = idp.issuer,
            extra = pair.extra,
        )
    };
    let data = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (config_a, config_b) = (config(&listeners_a, &data.0), config(&listeners_b, &data.1));
    let a = start_on_with_clock(upstream, &config_a, listeners_a, pair.clock.clone());
    let b = start_on_with_clock(upstream_addr, &config_b, listeners_b, pair.clock.clone());
    a.wait_ready().await;
    b.wait_ready().await;
    ReplicaPair {
        idp,
        a,
        b,
        url,
        clock: pair.clock,
        _data: data,
    }
}
