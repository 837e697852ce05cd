//! Metric definitions and the helpers that record them. Each Gatehouse instance owns its own
//! registry (so in-process tests do not share counters); `/metrics` on the admin listener
//! renders it. Labels are bounded: never a path, host, user or email.

use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Every reason `gatehouse_upstream_errors_total` can carry.
pub const UPSTREAM_ERROR_REASONS: &[&str] = &[
    "connect_refused",
    "connect_timeout",
    "read_timeout",
    "write_timeout",
    "reset",
    "tls",
    "other",
];

/// Every route kind the request metrics can carry.
pub const KINDS: &[&str] = &["public", "protected", "auth", "internal"];

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    in_flight: IntGauge,
    upstream_errors: IntCounterVec,
    /// Incoming headers removed because a client may not set them, by kind.
    spoofed: IntCounterVec,
    /// Login, session and token metrics.
    pub auth: AuthMetrics,
    /// Client connections: open, refused, timed out; client mistakes.
    pub conns: ConnMetrics,
    /// Re-resolutions of upstream host names, by result.
    dns_refresh: IntCounterVec,
}

/// What one re-resolution of an upstream host name came to
/// (`gatehouse_dns_refresh_total{result}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsRefresh {
    /// The name still resolves to the address in use.
    Unchanged,
    /// The name resolves elsewhere now: the new address is in use.
    Changed,
    /// The lookup failed or found nothing: the last good address stays in use.
    Failed,
}

impl DnsRefresh {
    pub const ALL: [DnsRefresh; 3] = [Self::Unchanged, Self::Changed, Self::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unchanged => "unchanged",
            Self::Changed => "changed",
            Self::Failed => "failed",
        }
    }
}

/// Every kind `gatehouse_spoofed_headers_total` can carry.
pub const SPOOF_KINDS: &[&str] = &["header", "connection_token"];
/// Every reason `gatehouse_forward_auth_refused_total` can carry.
pub const FORWARD_AUTH_REFUSALS: &[&str] = &[
    "untrusted_peer",
    "missing",
    "repeated",
    "malformed",
    "conflict",
];

/// Every listener the connection metrics can carry.
pub const LISTENERS: &[&str] = &["proxy", "admin"];
/// Every reason `gatehouse_connections_rejected_total` can carry.
pub const REJECT_REASONS: &[&str] = &["max_connections", "max_connections_per_ip"];
/// Every kind `gatehouse_client_timeouts_total` can carry.
pub const TIMEOUT_KINDS: &[&str] = &["header", "body", "idle", "write"];
/// Every reason `gatehouse_client_errors_total` can carry.
pub const CLIENT_ERROR_REASONS: &[&str] =
    &["missing_host", "bad_host", "body_aborted", "body_timeout"];

/// Client connection metrics. Labels: fixed names only.
#[derive(Clone)]
pub struct ConnMetrics {
    pub open: IntGaugeVec,
    pub rejected: IntCounterVec,
    pub timeouts: IntCounterVec,
    pub client_errors: IntCounterVec,
}

impl ConnMetrics {
    fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let open = IntGaugeVec::new(
            Opts::new(
                "gatehouse_connections_open",
                "Client connections open now, by listener.",
            ),
            &["listener"],
        )?;
        let rejected = IntCounterVec::new(
            Opts::new(
                "gatehouse_connections_rejected_total",
                "Client connections closed at once because a limit was reached, by listener and reason.",
            ),
            &["listener", "reason"],
        )?;
        let timeouts = IntCounterVec::new(
            Opts::new(
                "gatehouse_client_timeouts_total",
                "Client connections or requests ended by a client deadline, by kind.",
            ),
            &["kind"],
        )?;
        let client_errors = IntCounterVec::new(
            Opts::new(
                "gatehouse_client_errors_total",
                "Requests answered 400 or 408 for a client mistake, by reason.",
            ),
            &["reason"],
        )?;
        for listener in LISTENERS {
            open.with_label_values(&[listener]).set(0);
            for reason in REJECT_REASONS {
                rejected.with_label_values(&[listener, reason]);
            }
        }
        for kind in TIMEOUT_KINDS {
            timeouts.with_label_values(&[kind]);
        }
        for reason in CLIENT_ERROR_REASONS {
            client_errors.with_label_values(&[reason]);
        }
        registry.register(Box::new(open.clone()))?;
        registry.register(Box::new(rejected.clone()))?;
        registry.register(Box::new(timeouts.clone()))?;
        registry.register(Box::new(client_errors.clone()))?;
        Ok(Self {
            open,
            rejected,
            timeouts,
            client_errors,
        })
    }

    pub fn timeout(&self, kind: &str) {
        self.timeouts.with_label_values(&[kind]).inc();
    }

    pub fn client_error(&self, reason: &str) {
        self.client_errors.with_label_values(&[reason]).inc();
    }
}

/// Every result `gatehouse_logins_total` can carry.
pub const LOGIN_RESULTS: &[&str] = &[
    "success",
    "idp_error",
    "state_invalid",
    "token_invalid",
    "exchange_failed",
    "idp_unavailable",
    "store_error",
    "account_refused",
];

/// Every action `gatehouse_jit_provisions_total` can carry.
pub const JIT_ACTIONS: &[&str] = &["created", "linked", "updated", "unchanged", "refused"];

/// Every rule `gatehouse_access_denied_total` can carry.
pub const ACCESS_RULES: &[&str] = &["email_domain", "group", "role", "connection"];

/// Every result `gatehouse_mfa_challenges_total` can carry.
pub const MFA_RESULTS: &[&str] = &["success", "failure", "locked", "replay", "recovery"];

/// Every operation `gatehouse_store_errors_total` can carry.
pub const STORE_OPS: &[&str] = &["login", "session_write", "session_delete", "admin", "read"];

/// Metrics of the login dance, sessions and tokens. Labels: connection ids (from config) and
/// fixed result names only.
#[derive(Clone)]
pub struct AuthMetrics {
    pub logins: IntCounterVec,
    pub login_duration: HistogramVec,
    pub sessions_active: IntGauge,
    pub session_refresh: IntCounterVec,
    pub logouts: IntCounterVec,
    pub bearer: IntCounterVec,
    pub idp_up: IntGaugeVec,
    pub jwks_refresh: IntCounterVec,
    pub session_rejected: IntCounterVec,
    pub jit_provisions: IntCounterVec,
    pub jit_duration: prometheus::Histogram,
    pub store_errors: IntCounterVec,
    pub users: IntGauge,
    pub access_denied: IntCounterVec,
    pub mfa_challenges: IntCounterVec,
    pub mfa_enrolments: prometheus::IntCounter,
    pub mfa_conflicts: IntCounterVec,
    /// Calls to the login endpoints refused by a per-client rate, by endpoint.
    pub rate_limited: IntCounterVec,
    /// Live entries dropped from a full in-memory map, by map.
    pub evictions: IntCounterVec,
    /// Forward-auth calls not answered about a request, by reason.
    pub forward_auth_refused: IntCounterVec,
}

/// Every map `gatehouse_memory_evictions_total` can name.
pub const BOUNDED_MAPS: [&str; 2] = ["used_states", "pending_mfa"];

impl AuthMetrics {
    fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let counter =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
                let c = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let logins = counter(
            "gatehouse_logins_total",
            "Completed or failed logins, by connection and result.",
            &["connection", "result"],
        )?;
        let session_refresh = counter(
            "gatehouse_session_refresh_total",
            "Token refreshes, by result.",
            &["result"],
        )?;
        let logouts = counter(
            "gatehouse_logouts_total",
            "Sessions ended, by kind (user, backchannel, expired, refresh_failed).",
            &["kind"],
        )?;
        let bearer = counter(
            "gatehouse_bearer_total",
            "Bearer tokens checked, by result.",
            &["result"],
        )?;
        let jwks_refresh = counter(
            "gatehouse_jwks_refresh_total",
            "Discovery and key-set fetches, by connection and result.",
            &["connection", "result"],
        )?;
        let session_rejected = counter(
            "gatehouse_session_rejected_total",
            "Session cookies refused, by reason.",
            &["reason"],
        )?;
        let jit_provisions = counter(
            "gatehouse_jit_provisions_total",
            "Just-In-Time provisioning at login, by connection and action.",
            &["connection", "action"],
        )?;
        let store_errors = counter(
            "gatehouse_store_errors_total",
            "Store operations that failed, by operation.",
            &["op"],
        )?;
        let access_denied = counter(
            "gatehouse_access_denied_total",
            "Signed-in requests refused by an access rule, by rule.",
            &["rule"],
        )?;
        let mfa_challenges = counter(
            "gatehouse_mfa_challenges_total",
            "Second-factor attempts, by result.",
            &["result"],
        )?;
        for result in MFA_RESULTS {
            mfa_challenges.with_label_values(&[result]);
        }
        let mfa_conflicts = counter(
            "gatehouse_mfa_conflicts_total",
            "Logins and requests refused because a JIT-off connection cannot pass a required second factor.",
            &["connection"],
        )?;
        let mfa_enrolments = prometheus::IntCounter::new(
            "gatehouse_mfa_enrolments_total",
            "TOTP enrolments confirmed.",
        )?;
        registry.register(Box::new(mfa_enrolments.clone()))?;
        let rate_limited = counter(
            "gatehouse_rate_limited_total",
            "Calls to the login endpoints refused with 429 by the per-client rate, by endpoint.",
            &["endpoint"],
        )?;
        for endpoint in ["login", "mfa", "backchannel"] {
            rate_limited.with_label_values(&[endpoint]);
        }
        let evictions = counter(
            "gatehouse_memory_evictions_total",
            "Live entries dropped because an in-memory map reached its bound, by map.",
            &["map"],
        )?;
        for map in BOUNDED_MAPS {
            evictions.with_label_values(&[map]);
        }
        let forward_auth_refused = counter(
            "gatehouse_forward_auth_refused_total",
            "Forward-auth calls refused before any check: a caller that is not a trusted proxy, \
             or a URI or method header missing, repeated, malformed or contradicted.",
            &["reason"],
        )?;
        for reason in FORWARD_AUTH_REFUSALS {
            forward_auth_refused.with_label_values(&[reason]);
        }
        for op in STORE_OPS {
            store_errors.with_label_values(&[op]);
        }
        for rule in ACCESS_RULES {
            access_denied.with_label_values(&[rule]);
        }
        let jit_duration = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "gatehouse_jit_duration_seconds",
                "Time of the login's store transaction: provisioning and the new session.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            ]),
        )?;
        registry.register(Box::new(jit_duration.clone()))?;
        let users = IntGauge::new("gatehouse_users", "Local accounts in the store.")?;
        registry.register(Box::new(users.clone()))?;
        let login_duration = HistogramVec::new(
            HistogramOpts::new(
                "gatehouse_login_duration_seconds",
                "Time of the callback: code exchange, token checks, session.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["connection"],
        )?;
        registry.register(Box::new(login_duration.clone()))?;
        let sessions_active = IntGauge::new("gatehouse_sessions_active", "Live sessions.")?;
        registry.register(Box::new(sessions_active.clone()))?;
        let idp_up = IntGaugeVec::new(
            Opts::new(
                "gatehouse_idp_up",
                "1 when the connection's IdP metadata and keys are loaded.",
            ),
            &["connection"],
        )?;
        registry.register(Box::new(idp_up.clone()))?;
        for result in ["success", "failure"] {
            session_refresh.with_label_values(&[result]);
        }
        for result in ["valid", "invalid", "not_allowed"] {
            bearer.with_label_values(&[result]);
        }
        Ok(Self {
            logins,
            login_duration,
            sessions_active,
            session_refresh,
            logouts,
            bearer,
            idp_up,
            jwks_refresh,
            session_rejected,
            jit_provisions,
            jit_duration,
            store_errors,
            users,
            access_denied,
            mfa_challenges,
            mfa_enrolments,
            mfa_conflicts,
            rate_limited,
            evictions,
            forward_auth_refused,
        })
    }

    pub fn store_error(&self, op: &str) {
        self.store_errors.with_label_values(&[op]).inc();
    }

    /// Shows every connection's series from the start (at 0).
    pub fn register_connection(&self, connection: &str) {
        for result in LOGIN_RESULTS {
            self.logins.with_label_values(&[connection, result]);
        }
        self.login_duration.with_label_values(&[connection]);
        for action in JIT_ACTIONS {
            self.jit_provisions.with_label_values(&[connection, action]);
        }
        self.idp_up.with_label_values(&[connection]).set(0);
        self.mfa_conflicts.with_label_values(&[connection]);
    }
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "gatehouse_http_requests_total",
                "Requests answered, by route kind and status code.",
            ),
            &["kind", "code"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "gatehouse_http_request_duration_seconds",
                "Time from request header to the end of the response, by route kind.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            &["kind"],
        )?;
        let in_flight = IntGauge::new(
            "gatehouse_http_requests_in_flight",
            "Requests being handled now.",
        )?;
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "gatehouse_upstream_errors_total",
                "Requests that failed at the upstream, by reason.",
            ),
            &["reason"],
        )?;
        let build_info = IntGaugeVec::new(
            Opts::new(
                "gatehouse_build_info",
                "Always 1; the label carries the version.",
            ),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for reason in UPSTREAM_ERROR_REASONS {
            upstream_errors.with_label_values(&[reason]);
        }
        for kind in KINDS {
            duration.with_label_values(&[kind]);
        }
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(upstream_errors.clone()))?;
        registry.register(Box::new(build_info))?;
        let spoofed = IntCounterVec::new(
            Opts::new(
                "gatehouse_spoofed_headers_total",
                "Incoming headers a client may not set, removed: identity and foreign identity \
                 headers (header), Connection tokens naming them (connection_token).",
            ),
            &["kind"],
        )?;
        for kind in SPOOF_KINDS {
            spoofed.with_label_values(&[kind]);
        }
        registry.register(Box::new(spoofed.clone()))?;
        let dns_refresh = IntCounterVec::new(
            Opts::new(
                "gatehouse_dns_refresh_total",
                "Background re-resolutions of upstream host names, by result (unchanged, \
                 changed, failed: the last good address stays in use).",
            ),
            &["result"],
        )?;
        for result in DnsRefresh::ALL {
            dns_refresh.with_label_values(&[result.as_str()]);
        }
        registry.register(Box::new(dns_refresh.clone()))?;
        let auth = AuthMetrics::new(&registry)?;
        let conns = ConnMetrics::new(&registry)?;
        Ok(Self {
            auth,
            conns,
            dns_refresh,
            registry,
            requests,
            duration,
            in_flight,
            upstream_errors,
            spoofed,
        })
    }

    /// Counts incoming headers (or `Connection` tokens) removed because a client may not set
    /// them; `kind` is one of [`SPOOF_KINDS`].
    pub fn spoofed(&self, kind: &'static str, count: usize) {
        self.spoofed.with_label_values(&[kind]).inc_by(count as u64);
    }

    pub fn request_started(&self) {
        self.in_flight.inc();
    }

    pub fn request_finished(&self, kind: &str, code: u16, elapsed: Duration) {
        self.in_flight.dec();
        let status = http::StatusCode::from_u16(code).ok();
        let code = status.as_ref().map_or("0", http::StatusCode::as_str);
        self.requests.with_label_values(&[kind, code]).inc();
        self.duration
            .with_label_values(&[kind])
            .observe(elapsed.as_secs_f64());
    }

    pub fn in_flight(&self) -> i64 {
        self.in_flight.get()
    }

    pub fn upstream_error(&self, reason: &str) {
        self.upstream_errors.with_label_values(&[reason]).inc();
    }

    /// Counts one re-resolution of an upstream host name.
    pub fn dns_refresh(&self, result: DnsRefresh) {
        self.dns_refresh.with_label_values(&[result.as_str()]).inc();
    }

    /// The registry in Prometheus text format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4096);
        // Encoding into a Vec cannot fail for the text format.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finished_request_is_counted_by_kind_and_code() {
        let m = Metrics::new().unwrap();
        m.request_started();
        m.request_finished("public", 200, Duration::from_millis(3));
        let text = String::from_utf8(m.render()).unwrap();
        assert!(
            text.contains("gatehouse_http_requests_total{code=\"200\",kind=\"public\"} 1"),
            "{text}"
        );
        assert!(text.contains("gatehouse_http_requests_in_flight 0"));
        assert!(text.contains("gatehouse_upstream_errors_total{reason=\"connect_refused\"} 0"));
        assert!(text.contains("gatehouse_build_info{version="));
    }
}
