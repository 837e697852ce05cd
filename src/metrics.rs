//! Metric definitions and the helpers that record them. Each Gatehouse instance owns its own
//! registry (so in-process tests do not share counters); `/metrics` on the admin listener
//! renders it. Labels are bounded: never a path, host, user or email.

use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Defines the values one metric label can take: an enum whose variants are the only values,
/// `as_str` for the text, and `ALL` so every series is shown (at 0) from the start.
macro_rules! label {
    ($(#[$doc:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The label value as exported.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }
    };
}

label! {
    /// The `kind` of a request (`gatehouse_http_requests_total`, the duration histogram).
    RouteKind { Public => "public", Protected => "protected", Auth => "auth", Internal => "internal" }
}

label! {
    /// Why a request failed at the upstream (`gatehouse_upstream_errors_total`).
    UpstreamError {
        ConnectRefused => "connect_refused",
        ConnectTimeout => "connect_timeout",
        ReadTimeout => "read_timeout",
        WriteTimeout => "write_timeout",
        Reset => "reset",
        Tls => "tls",
        Other => "other",
    }
}

label! {
    /// What a client sent that it may not (`gatehouse_spoofed_headers_total`): an identity or
    /// foreign identity header, or a `Connection` token naming one.
    SpoofKind { Header => "header", ConnectionToken => "connection_token" }
}

label! {
    /// Why a forward-auth call was refused (`gatehouse_forward_auth_refused_total`).
    ForwardAuthReason {
        UntrustedPeer => "untrusted_peer",
        Missing => "missing",
        Repeated => "repeated",
        Malformed => "malformed",
        Conflict => "conflict",
    }
}

label! {
    /// A listener (the connection metrics).
    Listener { Proxy => "proxy", Admin => "admin" }
}

label! {
    /// Why a connection was closed at once (`gatehouse_connections_rejected_total`).
    RejectReason { MaxConnections => "max_connections", MaxConnectionsPerIp => "max_connections_per_ip" }
}

label! {
    /// Which client deadline passed (`gatehouse_client_timeouts_total`).
    TimeoutKind { Header => "header", Body => "body", Idle => "idle", Write => "write" }
}

label! {
    /// Which client mistake was answered 400 or 408 (`gatehouse_client_errors_total`).
    ClientError {
        MissingHost => "missing_host",
        BadHost => "bad_host",
        BodyAborted => "body_aborted",
        BodyTimeout => "body_timeout",
    }
}

label! {
    /// How a login ended (`gatehouse_logins_total`).
    LoginResult {
        Success => "success",
        IdpError => "idp_error",
        StateInvalid => "state_invalid",
        TokenInvalid => "token_invalid",
        ExchangeFailed => "exchange_failed",
        IdpUnavailable => "idp_unavailable",
        StoreError => "store_error",
        AccountRefused => "account_refused",
    }
}

label! {
    /// What Just-In-Time provisioning did (`gatehouse_jit_provisions_total`).
    JitOutcome {
        Created => "created",
        Linked => "linked",
        Updated => "updated",
        Unchanged => "unchanged",
        Refused => "refused",
    }
}

label! {
    /// The access rule that refused a request (`gatehouse_access_denied_total`).
    AccessRule { EmailDomain => "email_domain", Group => "group", Role => "role", Connection => "connection" }
}

label! {
    /// How a second-factor attempt ended (`gatehouse_mfa_challenges_total`).
    MfaResult {
        Success => "success",
        Failure => "failure",
        Locked => "locked",
        Replay => "replay",
        Expired => "expired",
    }
}

label! {
    /// Which second factor an attempt used (`gatehouse_mfa_challenges_total`).
    MfaFactor { Totp => "totp", EmailOtp => "email_otp", RecoveryCode => "recovery_code" }
}

label! {
    /// How an Email OTP send ended (`gatehouse_mfa_email_send_total`).
    EmailSend { Sent => "sent", Refused => "refused", Timeout => "timeout", Error => "error" }
}

label! {
    /// The store operation that failed (`gatehouse_store_errors_total`).
    StoreOp {
        Login => "login",
        SessionWrite => "session_write",
        SessionDelete => "session_delete",
        Admin => "admin",
        Read => "read",
    }
}

label! {
    /// A bounded in-memory map (`gatehouse_memory_evictions_total`).
    BoundedMap { UsedStates => "used_states", PendingMfa => "pending_mfa" }
}

label! {
    /// How a token refresh ended (`gatehouse_session_refresh_total`).
    RefreshResult { Success => "success", Failure => "failure" }
}

label! {
    /// How a bearer token was taken (`gatehouse_bearer_total`).
    BearerResult { Valid => "valid", Invalid => "invalid", NotAllowed => "not_allowed" }
}

label! {
    /// Why sessions ended (`gatehouse_logouts_total`).
    LogoutKind {
        User => "user",
        Backchannel => "backchannel",
        Expired => "expired",
        RefreshFailed => "refresh_failed",
        Admin => "admin",
    }
}

label! {
    /// Why a session cookie was refused (`gatehouse_session_rejected_total`).
    SessionRejection { Forged => "forged", Expired => "expired", Idle => "idle", Revoked => "revoked" }
}

label! {
    /// A login endpoint with a per-client rate (`gatehouse_rate_limited_total`).
    RateLimited { Login => "login", Mfa => "mfa", Backchannel => "backchannel" }
}

label! {
    /// How a discovery or key-set fetch ended (`gatehouse_jwks_refresh_total`).
    FetchResult { Success => "success", Failure => "failure" }
}

/// Status codes with a resolved handle each (every valid code is below it; 0: no response).
const CODES: usize = 1000;

/// `gatehouse_http_requests_total` and `_duration_seconds` handles by route kind (its `ALL`
/// order) and status code: the duration series made at startup, a counter on first use (the
/// same series `with_label_values` would make then).
struct RequestHandles {
    requests: IntCounterVec,
    counters: Vec<Box<[std::sync::OnceLock<prometheus::IntCounter>]>>,
    durations: Vec<prometheus::Histogram>,
}

impl RequestHandles {
    fn new(requests: &IntCounterVec, duration: &HistogramVec) -> Self {
        Self {
            requests: requests.clone(),
            counters: RouteKind::ALL
                .iter()
                .map(|_| (0..CODES).map(|_| std::sync::OnceLock::new()).collect())
                .collect(),
            durations: RouteKind::ALL
                .iter()
                .map(|kind| duration.with_label_values(&[kind.as_str()]))
                .collect(),
        }
    }

    fn counter(&self, kind: RouteKind, code: u16) -> &prometheus::IntCounter {
        // A code that is no HTTP status counts as "0", as before.
        let code = http::StatusCode::from_u16(code).map_or(0, |s| s.as_u16());
        let slot = &self.counters[kind as usize][usize::from(code).min(CODES - 1)];
        slot.get_or_init(|| {
            let text = code.to_string();
            self.requests.with_label_values(&[kind.as_str(), &text])
        })
    }
}

pub struct Metrics {
    registry: Registry,
    /// The per-request series, resolved once rather than looked up by label on every request.
    handles: RequestHandles,
    in_flight: IntGauge,
    /// 1 while `/ready` answers 200; set when `/metrics` is rendered.
    ready: IntGauge,
    upstream_errors: IntCounterVec,
    /// Incoming headers removed because a client may not set them, by kind.
    spoofed: IntCounterVec,
    /// Login, session and token metrics.
    pub auth: AuthMetrics,
    /// Client connections: open, refused, timed out; client mistakes.
    pub conns: ConnMetrics,
    /// Re-resolutions of upstream host names, by result.
    dns_refresh: IntCounterVec,
    /// Config reloads: counted, when the last one succeeded, which config is live.
    pub config: ConfigMetrics,
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

/// Client connection metrics. Labels: fixed names only.
#[derive(Clone)]
pub struct ConnMetrics {
    open: IntGaugeVec,
    rejected: IntCounterVec,
    timeouts: IntCounterVec,
    client_errors: IntCounterVec,
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
        for listener in Listener::ALL {
            open.with_label_values(&[listener.as_str()]).set(0);
            for reason in RejectReason::ALL {
                rejected.with_label_values(&[listener.as_str(), reason.as_str()]);
            }
        }
        for kind in TimeoutKind::ALL {
            timeouts.with_label_values(&[kind.as_str()]);
        }
        for reason in ClientError::ALL {
            client_errors.with_label_values(&[reason.as_str()]);
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

    pub fn timeout(&self, kind: TimeoutKind) {
        self.timeouts.with_label_values(&[kind.as_str()]).inc();
    }

    pub fn client_error(&self, reason: ClientError) {
        self.client_errors
            .with_label_values(&[reason.as_str()])
            .inc();
    }

    /// The gauge of open connections on `listener`.
    pub fn open(&self, listener: Listener) -> IntGauge {
        self.open.with_label_values(&[listener.as_str()])
    }

    pub fn rejected(&self, listener: Listener, reason: RejectReason) {
        self.rejected
            .with_label_values(&[listener.as_str(), reason.as_str()])
            .inc();
    }
}

/// Metrics of the login dance, sessions and tokens. Labels: connection ids (from config) and
/// fixed result names only.
#[derive(Clone)]
pub struct AuthMetrics {
    logins: IntCounterVec,
    login_duration: HistogramVec,
    pub sessions_active: IntGauge,
    session_refresh: IntCounterVec,
    logouts: IntCounterVec,
    bearer: IntCounterVec,
    idp_up: IntGaugeVec,
    jwks_refresh: IntCounterVec,
    session_rejected: IntCounterVec,
    jit_provisions: IntCounterVec,
    pub jit_duration: prometheus::Histogram,
    store_errors: IntCounterVec,
    pub users: IntGauge,
    /// `gatehouse_store_up`.
    pub store_up: IntGauge,
    access_denied: IntCounterVec,
    mfa_challenges: IntCounterVec,
    pub mfa_enrolments: prometheus::IntCounter,
    mfa_conflicts: IntCounterVec,
    mfa_email_sends: IntCounterVec,
    mfa_email_send_duration: prometheus::Histogram,
    /// Calls to the login endpoints refused by a per-client rate, by endpoint.
    rate_limited: IntCounterVec,
    /// Live entries dropped from a full in-memory map, by map.
    evictions: IntCounterVec,
    /// Forward-auth calls not answered about a request, by reason.
    forward_auth_refused: IntCounterVec,
}

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
            "Second-factor attempts, by factor and result.",
            &["factor", "result"],
        )?;
        for factor in MfaFactor::ALL {
            for result in MfaResult::ALL {
                mfa_challenges.with_label_values(&[factor.as_str(), result.as_str()]);
            }
        }
        let mfa_email_sends = counter(
            "gatehouse_mfa_email_send_total",
            "Email OTP mails handed to the SMTP server, by result.",
            &["result"],
        )?;
        for result in EmailSend::ALL {
            mfa_email_sends.with_label_values(&[result.as_str()]);
        }
        let mfa_email_send_duration = prometheus::Histogram::with_opts(
            prometheus::HistogramOpts::new(
                "gatehouse_mfa_email_send_duration_seconds",
                "Time to hand one Email OTP mail to the SMTP server (any result).",
            )
            .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
        )?;
        registry.register(Box::new(mfa_email_send_duration.clone()))?;
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
        for endpoint in RateLimited::ALL {
            rate_limited.with_label_values(&[endpoint.as_str()]);
        }
        let evictions = counter(
            "gatehouse_memory_evictions_total",
            "Live entries dropped because an in-memory map reached its bound, by map.",
            &["map"],
        )?;
        for map in BoundedMap::ALL {
            evictions.with_label_values(&[map.as_str()]);
        }
        let forward_auth_refused = counter(
            "gatehouse_forward_auth_refused_total",
            "Forward-auth calls refused before any check: a caller that is not a trusted proxy, \
             or a URI or method header missing, repeated, malformed or contradicted.",
            &["reason"],
        )?;
        for reason in ForwardAuthReason::ALL {
            forward_auth_refused.with_label_values(&[reason.as_str()]);
        }
        for op in StoreOp::ALL {
            store_errors.with_label_values(&[op.as_str()]);
        }
        for rule in AccessRule::ALL {
            access_denied.with_label_values(&[rule.as_str()]);
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
        let store_up = IntGauge::new(
            "gatehouse_store_up",
            "1 when the store answers (always for the embedded file; PostgreSQL: the last time the replica asked).",
        )?;
        store_up.set(1);
        registry.register(Box::new(store_up.clone()))?;
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
        for result in RefreshResult::ALL {
            session_refresh.with_label_values(&[result.as_str()]);
        }
        for result in BearerResult::ALL {
            bearer.with_label_values(&[result.as_str()]);
        }
        for kind in LogoutKind::ALL {
            logouts.with_label_values(&[kind.as_str()]);
        }
        for reason in SessionRejection::ALL {
            session_rejected.with_label_values(&[reason.as_str()]);
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
            store_up,
            access_denied,
            mfa_challenges,
            mfa_enrolments,
            mfa_conflicts,
            mfa_email_sends,
            mfa_email_send_duration,
            rate_limited,
            evictions,
            forward_auth_refused,
        })
    }

    pub fn store_error(&self, op: StoreOp) {
        self.store_errors.with_label_values(&[op.as_str()]).inc();
    }

    /// Shows every connection's series from the start (at 0). `connection` is a configured
    /// connection id (bounded by the config).
    pub fn register_connection(&self, connection: &str) {
        for result in LoginResult::ALL {
            self.logins
                .with_label_values(&[connection, result.as_str()]);
        }
        self.login_duration.with_label_values(&[connection]);
        for action in JitOutcome::ALL {
            self.jit_provisions
                .with_label_values(&[connection, action.as_str()]);
        }
        for result in FetchResult::ALL {
            self.jwks_refresh
                .with_label_values(&[connection, result.as_str()]);
        }
        self.idp_up.with_label_values(&[connection]).set(0);
        self.mfa_conflicts.with_label_values(&[connection]);
    }

    pub fn login(&self, connection: &str, result: LoginResult) {
        self.logins
            .with_label_values(&[connection, result.as_str()])
            .inc();
    }

    /// The login-duration histogram of a connection.
    pub fn login_duration(&self, connection: &str) -> prometheus::Histogram {
        self.login_duration.with_label_values(&[connection])
    }

    pub fn refresh(&self, result: RefreshResult) {
        self.session_refresh
            .with_label_values(&[result.as_str()])
            .inc();
    }

    pub fn logouts(&self, kind: LogoutKind, count: usize) {
        self.logouts
            .with_label_values(&[kind.as_str()])
            .inc_by(count as u64);
    }

    pub fn bearer(&self, result: BearerResult) {
        self.bearer.with_label_values(&[result.as_str()]).inc();
    }

    /// A config reload removed the connection: its `gatehouse_idp_up` sample goes away, so
    /// an alert on an IdP that is down never fires for it.
    pub fn forget_idp(&self, connection: &str) {
        let _ = self.idp_up.remove_label_values(&[connection]);
    }

    pub fn idp_up(&self, connection: &str, up: bool) {
        self.idp_up
            .with_label_values(&[connection])
            .set(i64::from(up));
    }

    pub fn fetch(&self, connection: &str, result: FetchResult) {
        self.jwks_refresh
            .with_label_values(&[connection, result.as_str()])
            .inc();
    }

    pub fn session_rejected(&self, reason: SessionRejection) {
        self.session_rejected
            .with_label_values(&[reason.as_str()])
            .inc();
    }

    pub fn jit(&self, connection: &str, outcome: JitOutcome) {
        self.jit_provisions
            .with_label_values(&[connection, outcome.as_str()])
            .inc();
    }

    pub fn access_denied(&self, rule: AccessRule) {
        self.access_denied.with_label_values(&[rule.as_str()]).inc();
    }

    pub fn mfa_challenge(&self, factor: MfaFactor, result: MfaResult) {
        self.mfa_challenges
            .with_label_values(&[factor.as_str(), result.as_str()])
            .inc();
    }

    /// One Email OTP send and how long it took.
    pub fn mfa_email_send(&self, result: EmailSend, seconds: f64) {
        self.mfa_email_sends
            .with_label_values(&[result.as_str()])
            .inc();
        self.mfa_email_send_duration.observe(seconds);
    }

    pub fn mfa_conflict(&self, connection: &str) {
        self.mfa_conflicts.with_label_values(&[connection]).inc();
    }

    pub fn rate_limited(&self, endpoint: RateLimited) {
        self.rate_limited
            .with_label_values(&[endpoint.as_str()])
            .inc();
    }

    /// The eviction counter of a bounded map (handed to the map, which counts itself).
    pub fn evictions(&self, map: BoundedMap) -> prometheus::IntCounter {
        self.evictions.with_label_values(&[map.as_str()])
    }

    pub fn forward_auth_refused(&self, reason: ForwardAuthReason) {
        self.forward_auth_refused
            .with_label_values(&[reason.as_str()])
            .inc();
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
        for reason in UpstreamError::ALL {
            upstream_errors.with_label_values(&[reason.as_str()]);
        }
        for kind in RouteKind::ALL {
            duration.with_label_values(&[kind.as_str()]);
        }
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(upstream_errors.clone()))?;
        registry.register(Box::new(build_info))?;
        if POOLED_CONNECTIONS_LOST.get().is_none() {
            let _ = POOLED_CONNECTIONS_LOST.set(IntCounter::with_opts(Opts::new(
                "gatehouse_upstream_pooled_connections_lost_total",
                "Idle upstream connections dropped instead of reused (a pingora race between \
                 worker threads); each request went on a new connection.",
            ))?);
        }
        if let Some(lost) = POOLED_CONNECTIONS_LOST.get() {
            registry.register(Box::new(lost.clone()))?;
        }
        let ready = IntGauge::new(
            "gatehouse_ready",
            "1 while /ready answers 200 (serving, not draining, IdPs discovered if required).",
        )?;
        registry.register(Box::new(ready.clone()))?;
        let spoofed = IntCounterVec::new(
            Opts::new(
                "gatehouse_spoofed_headers_total",
                "Incoming headers a client may not set, removed: identity and foreign identity \
                 headers (header), Connection tokens naming them (connection_token).",
            ),
            &["kind"],
        )?;
        for kind in SpoofKind::ALL {
            spoofed.with_label_values(&[kind.as_str()]);
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
        let config = ConfigMetrics::new(&registry)?;
        Ok(Self {
            auth,
            conns,
            config,
            dns_refresh,
            registry,
            handles: RequestHandles::new(&requests, &duration),
            in_flight,
            ready,
            upstream_errors,
            spoofed,
        })
    }

    /// Counts incoming headers (or `Connection` tokens) removed because a client may not set
    /// them.
    pub fn spoofed(&self, kind: SpoofKind, count: usize) {
        self.spoofed
            .with_label_values(&[kind.as_str()])
            .inc_by(count as u64);
    }

    pub fn request_started(&self) {
        self.in_flight.inc();
    }

    pub fn request_finished(&self, kind: RouteKind, code: u16, elapsed: Duration) {
        self.in_flight.dec();
        self.handles.counter(kind, code).inc();
        self.handles.durations[kind as usize].observe(elapsed.as_secs_f64());
    }

    /// Records what `/ready` answers now (`gatehouse_ready`).
    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    pub fn in_flight(&self) -> i64 {
        self.in_flight.get()
    }

    /// Counts one idle upstream connection pingora dropped instead of reusing (see
    /// [`POOLED_CONNECTIONS_LOST`]); a no-op before the first [`Metrics`] is made.
    pub fn pooled_connection_lost() {
        if let Some(counter) = POOLED_CONNECTIONS_LOST.get() {
            counter.inc();
        }
    }

    pub fn upstream_error(&self, reason: UpstreamError) {
        self.upstream_errors
            .with_label_values(&[reason.as_str()])
            .inc();
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

/// `gatehouse_upstream_pooled_connections_lost_total`: idle upstream connections pingora 0.9
/// dropped instead of reusing, in a race between worker threads (cloudflare/pingora#998);
/// the request is served on a new connection. pingora tells of it only in a log record, which
/// the process-wide log bridge counts (`logging`), so unlike the other metrics this counter
/// is one per process, shared by every registry in it.
static POOLED_CONNECTIONS_LOST: std::sync::OnceLock<IntCounter> = std::sync::OnceLock::new();

label! {
    /// How a config reload ended (`gatehouse_config_reloads_total`).
    ReloadResult { Success => "success", Error => "error" }
}

/// Config reloads (SIGHUP, `POST /api/reload`): how many, by result; when the last one
/// succeeded; and which config is live, by a hash of its file.
#[derive(Clone)]
pub struct ConfigMetrics {
    reloads: IntCounterVec,
    last_success: IntGauge,
    hash: IntGaugeVec,
    /// The hash label now set to 1 (the others are removed).
    live_hash: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    /// The served TLS certificate's notAfter; registered with the first certificate, so a
    /// Gatehouse without TLS exports no sample an expiry alert could misread.
    tls_expiry: IntGauge,
    tls_registered: std::sync::Arc<std::sync::Once>,
    registry: Registry,
}

impl ConfigMetrics {
    fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let reloads = IntCounterVec::new(
            Opts::new(
                "gatehouse_config_reloads_total",
                "Config reloads (SIGHUP or POST /api/reload), by result; an error keeps the old config.",
            ),
            &["result"],
        )?;
        for result in ReloadResult::ALL {
            reloads.with_label_values(&[result.as_str()]);
        }
        let last_success = IntGauge::new(
            "gatehouse_config_last_reload_success_timestamp_seconds",
            "When the live config was loaded (start or the last good reload), unix seconds.",
        )?;
        let hash = IntGaugeVec::new(
            Opts::new(
                "gatehouse_config_hash_info",
                "Always 1; the label is the first 16 hex digits of the SHA-256 of the live config file.",
            ),
            &["hash"],
        )?;
        registry.register(Box::new(reloads.clone()))?;
        registry.register(Box::new(last_success.clone()))?;
        registry.register(Box::new(hash.clone()))?;
        let tls_expiry = IntGauge::new(
            "gatehouse_tls_certificate_expiry_timestamp_seconds",
            "When the TLS certificate served now expires (the leaf's notAfter), unix seconds; \
             only with TLS listeners.",
        )?;
        Ok(Self {
            reloads,
            last_success,
            hash,
            live_hash: Default::default(),
            tls_expiry,
            tls_registered: std::sync::Arc::new(std::sync::Once::new()),
            registry: registry.clone(),
        })
    }

    /// The TLS certificate served from now on expires at unix second `not_after`.
    pub fn tls_certificate_expires(&self, not_after: i64) {
        self.tls_registered.call_once(|| {
            // Registered once, under a name nothing else uses: cannot collide.
            let _ = self.registry.register(Box::new(self.tls_expiry.clone()));
        });
        self.tls_expiry.set(not_after);
    }

    /// A config went live (at start or by a reload) at unix second `at`.
    pub fn live(&self, hash: &str, at: u64) {
        self.last_success.set(at as i64);
        if let Ok(mut live) = self.live_hash.lock() {
            if let Some(old) = live.take() {
                let _ = self.hash.remove_label_values(&[&old]);
            }
            self.hash.with_label_values(&[hash]).set(1);
            *live = Some(hash.to_string());
        }
    }

    pub fn reloaded(&self, result: ReloadResult) {
        self.reloads.with_label_values(&[result.as_str()]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without TLS there is no certificate expiry sample (an expiry alert would read a 0 as
    /// long expired); the first certificate brings it, and a reloaded one replaces its value.
    #[test]
    fn the_certificate_expiry_is_exported_only_once_a_certificate_is_served() {
        let m = Metrics::new().unwrap();
        let name = "gatehouse_tls_certificate_expiry_timestamp_seconds";
        assert!(!String::from_utf8(m.render()).unwrap().contains(name));
        m.config.tls_certificate_expires(1_900_000_000);
        m.config.tls_certificate_expires(2_000_000_000);
        let text = String::from_utf8(m.render()).unwrap();
        assert!(text.contains(&format!("\n{name} 2000000000\n")), "{text}");
    }

    #[test]
    fn a_finished_request_is_counted_by_kind_and_code() {
        let m = Metrics::new().unwrap();
        m.request_started();
        m.request_finished(RouteKind::Public, 200, Duration::from_millis(3));
        let text = String::from_utf8(m.render()).unwrap();
        assert!(
            text.contains("gatehouse_http_requests_total{code=\"200\",kind=\"public\"} 1"),
            "{text}"
        );
        assert!(text.contains("gatehouse_http_requests_in_flight 0"));
        assert!(text.contains("gatehouse_upstream_errors_total{reason=\"connect_refused\"} 0"));
        assert!(text.contains("gatehouse_build_info{version="));
    }

    /// Each label's values are distinct and in the exported spelling (lower snake case).
    #[test]
    fn label_values_are_distinct_snake_case_words() {
        fn check(values: Vec<&'static str>) {
            let mut seen = std::collections::HashSet::new();
            for v in values {
                assert!(
                    !v.is_empty() && v.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                    "{v}"
                );
                assert!(seen.insert(v), "{v} twice");
            }
        }
        check(LoginResult::ALL.iter().map(|v| v.as_str()).collect());
        check(JitOutcome::ALL.iter().map(|v| v.as_str()).collect());
        check(UpstreamError::ALL.iter().map(|v| v.as_str()).collect());
        check(MfaResult::ALL.iter().map(|v| v.as_str()).collect());
        check(MfaFactor::ALL.iter().map(|v| v.as_str()).collect());
        check(EmailSend::ALL.iter().map(|v| v.as_str()).collect());
        check(StoreOp::ALL.iter().map(|v| v.as_str()).collect());
        check(LogoutKind::ALL.iter().map(|v| v.as_str()).collect());
        check(ClientError::ALL.iter().map(|v| v.as_str()).collect());
    }
}
