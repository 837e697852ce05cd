//! The config file as written: serde structs that mirror the TOML one to one.
//!
//! Every struct rejects unknown keys, every optional key has its default here, and nothing in
//! this module is seen by the rest of the crate: [`super::validate`] turns a [`FileConfig`] into
//! the checked [`super::model::Config`].

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub log: LogSection,
    #[serde(default)]
    pub headers: HeadersSection,
    #[serde(default)]
    pub upstreams: Vec<UpstreamSection>,
    #[serde(default)]
    pub public: Vec<PublicSection>,
    #[serde(default)]
    pub store: StoreSection,
    #[serde(default)]
    pub session: SessionSection,
    #[serde(default)]
    pub login: LoginSection,
    #[serde(default)]
    pub connections: Vec<ConnectionSection>,
    #[serde(default)]
    pub access: Vec<AccessSection>,
    #[serde(default)]
    pub identity: IdentitySection,
    #[serde(default)]
    pub admin: AdminSection,
    #[serde(default)]
    pub mfa: MfaSection,
    /// `[smtp]`: the mail server Email OTP codes go through.
    pub smtp: Option<SmtpSection>,
    #[serde(default)]
    pub limits: LimitsSection,
    #[serde(default)]
    pub forward_auth: ForwardAuthSection,
    #[serde(default)]
    pub pages: PagesSection,
}

/// `[pages]`: branding of the pages Gatehouse shows itself.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PagesSection {
    /// The site name shown in every page's header and title.
    pub title: Option<String>,
    /// A logo: an `https://` URL or an absolute path on this host.
    pub logo_url: Option<String>,
    /// The accent colour of buttons and links: `#rgb` or `#rrggbb`.
    pub accent_color: Option<String>,
    /// A directory of override files (`style.css`, `header.html`, `footer.html`).
    pub templates_dir: Option<std::path::PathBuf>,
}

/// `[limits]`: how often one client address may call the login endpoints, and how much
/// Gatehouse keeps in memory for clients that have not signed in yet. 0 turns a rate off.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// `/oauth2/start` and `/oauth2/callback` together, per client address.
    pub login_per_minute: u32,
    /// `/oauth2/mfa`, per client address.
    pub mfa_per_minute: u32,
    /// `/oauth2/backchannel-logout`, per client address (the IdP's).
    pub backchannel_per_minute: u32,
    /// Login states remembered as used (replay guard), at most.
    pub used_states: usize,
    /// Logins waiting for their second factor, at most.
    pub pending_mfa: usize,
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            login_per_minute: 300,
            mfa_per_minute: 120,
            backchannel_per_minute: 600,
            used_states: 100_000,
            pending_mfa: 10_000,
        }
    }
}

/// `[forward_auth]`: which headers the front proxy sets on its `/oauth2/auth` subrequest.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardAuthSection {
    /// The one header that carries the URI the front proxy serves (`X-Forwarded-Uri` from
    /// Traefik and Caddy, `X-Original-URI` from nginx with `proxy_set_header`).
    #[serde(default = "default_forward_uri_header")]
    pub uri_header: String,
    /// The one header that carries that request's method.
    #[serde(default = "default_forward_method_header")]
    pub method_header: String,
}

impl Default for ForwardAuthSection {
    fn default() -> Self {
        Self {
            uri_header: default_forward_uri_header(),
            method_header: default_forward_method_header(),
        }
    }
}

fn default_forward_uri_header() -> String {
    "X-Forwarded-Uri".to_string()
}
fn default_forward_method_header() -> String {
    "X-Forwarded-Method".to_string()
}

/// `[mfa]`: the local second factor (TOTP) for JIT accounts.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MfaSection {
    /// `off`, `optional` (users who enrolled are asked) or `required`.
    #[serde(default = "default_mfa_level")]
    pub totp: String,
    /// For users of a JIT-off connection where TOTP is required: `deny` or `skip`.
    #[serde(default = "default_no_local_account")]
    pub when_no_local_account: String,
    /// The name authenticator apps show.
    #[serde(default = "default_mfa_issuer")]
    pub issuer: String,
    /// Base64 32-byte keys that seal TOTP secrets in the store (first seals, all open); or
    /// `keys_file` / `keys_env`; default: generated once into `data_dir/store.keys`.
    #[serde(default)]
    pub keys: Vec<String>,
    pub keys_file: Option<String>,
    pub keys_env: Option<String>,
    /// Wrong codes in a row before the account's second factor is locked.
    #[serde(default = "default_max_failures")]
    pub max_failures: u32,
    #[serde(default = "default_lockout")]
    pub lockout: String,
    /// Email OTP: `off`, `optional` (users with a verified email are asked) or `required`.
    #[serde(default = "default_mfa_level")]
    pub email_otp: String,
    /// Digits in an emailed code (6..8).
    #[serde(default = "default_email_otp_length")]
    pub email_otp_length: u32,
    /// How long an emailed code is valid.
    #[serde(default = "default_email_otp_ttl")]
    pub email_otp_ttl: String,
    /// How long before the user may ask for a new code.
    #[serde(default = "default_email_otp_resend_after")]
    pub email_otp_resend_after: String,
    /// Codes sent per pending login, at most.
    #[serde(default = "default_email_otp_max_sends")]
    pub email_otp_max_sends: u32,
}

/// `[smtp]`: where Email OTP codes are sent from.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpSection {
    pub host: String,
    /// Default: 587 for `starttls`, 465 for `tls`, 25 for `none`.
    pub port: Option<u16>,
    /// `none`, `starttls` (default) or `tls`.
    #[serde(default = "default_smtp_security")]
    pub security: String,
    /// The From address, e.g. `Gatehouse <no-reply@example.com>`.
    pub from: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub password_file: Option<String>,
    pub password_env: Option<String>,
    /// PEM CA certificates to trust instead of the built-in roots.
    pub ca_file: Option<String>,
    #[serde(default = "default_smtp_timeout")]
    pub timeout: String,
}

fn default_smtp_security() -> String {
    "starttls".to_string()
}
fn default_smtp_timeout() -> String {
    "10s".to_string()
}
fn default_email_otp_length() -> u32 {
    6
}
fn default_email_otp_ttl() -> String {
    "5m".to_string()
}
fn default_email_otp_resend_after() -> String {
    "30s".to_string()
}
fn default_email_otp_max_sends() -> u32 {
    5
}

impl Default for MfaSection {
    fn default() -> Self {
        Self {
            totp: default_mfa_level(),
            when_no_local_account: default_no_local_account(),
            issuer: default_mfa_issuer(),
            keys: Vec::new(),
            keys_file: None,
            keys_env: None,
            max_failures: default_max_failures(),
            lockout: default_lockout(),
            email_otp: default_mfa_level(),
            email_otp_length: default_email_otp_length(),
            email_otp_ttl: default_email_otp_ttl(),
            email_otp_resend_after: default_email_otp_resend_after(),
            email_otp_max_sends: default_email_otp_max_sends(),
        }
    }
}

fn default_mfa_level() -> String {
    "off".to_string()
}
fn default_no_local_account() -> String {
    "deny".to_string()
}
fn default_mfa_issuer() -> String {
    "Gatehouse".to_string()
}
fn default_max_failures() -> u32 {
    5
}
fn default_lockout() -> String {
    "5m".to_string()
}

/// `[server]`: listeners, threads, shutdown.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Plain-HTTP proxy listeners (HTTP/1.1 and h2c).
    #[serde(default = "default_listen")]
    pub listen: Vec<String>,
    /// TLS proxy listeners (HTTP/1.1 and h2 by ALPN); need `tls_cert` and `tls_key`.
    #[serde(default)]
    pub tls_listen: Vec<String>,
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    #[serde(default = "default_admin_listen")]
    pub admin_listen: String,
    /// 0 means one per CPU.
    #[serde(default)]
    pub worker_threads: usize,
    #[serde(default = "default_grace")]
    pub shutdown_grace: String,
    #[serde(default = "default_keepalive_pool")]
    pub upstream_keepalive_pool: usize,
    /// How often upstream host names are resolved again; at least 1s.
    #[serde(default = "default_dns_refresh")]
    pub dns_refresh: String,
    /// The whole request head must arrive within this long.
    #[serde(default = "default_client_header_timeout")]
    pub client_header_timeout: String,
    /// Longest wait between two reads of a request body.
    #[serde(default = "default_client_body_timeout")]
    pub client_body_timeout: String,
    /// An idle keep-alive (HTTP/1) or stream-less (h2) connection is closed after this long.
    #[serde(default = "default_client_idle_timeout")]
    pub client_idle_timeout: String,
    /// Longest wait for a client to take response bytes (a socket or an h2 stream window).
    #[serde(default = "default_client_write_timeout")]
    pub client_write_timeout: String,
    /// Open client connections on the proxy listeners; 0 derives it from the open-files limit.
    #[serde(default)]
    pub max_connections: usize,
    /// Open client connections per client address; 0 means no per-address limit.
    #[serde(default)]
    pub max_connections_per_ip: usize,
    /// Concurrent HTTP/2 streams per client connection.
    #[serde(default = "default_h2_streams")]
    pub h2_max_concurrent_streams: u32,
    /// Refuse double-encoded dots, separators and `%` in paths (400).
    #[serde(default = "default_true")]
    pub reject_double_encoding: bool,
    /// Say on purpose that protected routes have no way in (no connection, no bearer).
    #[serde(default)]
    pub deny_all: bool,
    /// `/ready` also waits for every identity provider to be discovered.
    #[serde(default)]
    pub ready_requires_idp: bool,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            tls_listen: Vec::new(),
            tls_cert: None,
            tls_key: None,
            admin_listen: default_admin_listen(),
            worker_threads: 0,
            shutdown_grace: default_grace(),
            upstream_keepalive_pool: default_keepalive_pool(),
            dns_refresh: default_dns_refresh(),
            client_header_timeout: default_client_header_timeout(),
            client_body_timeout: default_client_body_timeout(),
            client_idle_timeout: default_client_idle_timeout(),
            client_write_timeout: default_client_write_timeout(),
            max_connections: 0,
            max_connections_per_ip: 0,
            h2_max_concurrent_streams: default_h2_streams(),
            reject_double_encoding: true,
            deny_all: false,
            ready_requires_idp: false,
        }
    }
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:4180";
/// Where the container image keeps its config (`GATEHOUSE_CONFIG` points here).
pub const CONTAINER_CONFIG_PATH: &str = "/etc/gatehouse/gatehouse.toml";
/// The data directory of the embedded store (the container image's volume).
pub const DEFAULT_DATA_DIR: &str = "/var/lib/gatehouse";
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";

fn default_listen() -> Vec<String> {
    vec![DEFAULT_LISTEN.to_string()]
}
fn default_admin_listen() -> String {
    DEFAULT_ADMIN_LISTEN.to_string()
}
fn default_grace() -> String {
    "10s".to_string()
}
fn default_dns_refresh() -> String {
    "30s".to_string()
}
fn default_keepalive_pool() -> usize {
    128
}
fn default_client_header_timeout() -> String {
    "10s".to_string()
}
fn default_client_body_timeout() -> String {
    "30s".to_string()
}
fn default_client_idle_timeout() -> String {
    "60s".to_string()
}
fn default_client_write_timeout() -> String {
    "30s".to_string()
}
fn default_h2_streams() -> u32 {
    100
}

/// `[log]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    #[serde(default = "default_log_format")]
    pub format: String,
    #[serde(default = "default_log_level")]
    pub level: String,
    #[serde(default = "default_true")]
    pub access_log: bool,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            format: default_log_format(),
            level: default_log_level(),
            access_log: true,
        }
    }
}

fn default_log_format() -> String {
    "text".to_string()
}
fn default_log_level() -> String {
    "info".to_string()
}
fn default_true() -> bool {
    true
}

/// `[headers]`: the identity headers Gatehouse sets, and whom to trust for forwarding headers.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadersSection {
    #[serde(default = "default_user_header")]
    pub user: String,
    #[serde(default = "default_email_header")]
    pub email: String,
    #[serde(default = "default_groups_header")]
    pub groups: String,
    #[serde(default = "default_preferred_username_header")]
    pub preferred_username: String,
    #[serde(default = "default_user_id_header")]
    pub user_id: String,
    #[serde(default = "default_roles_header")]
    pub roles: String,
    #[serde(default = "default_name_header")]
    pub name: String,
    /// Attribute name -> header name, for the attributes kept from the IdP's claims
    /// (`connections.claims.attributes`) or set locally.
    #[serde(default)]
    pub attributes: std::collections::BTreeMap<String, String>,
    /// Pass the IdP's access token / ID token to the app (off by default).
    #[serde(default)]
    pub pass_access_token: bool,
    #[serde(default = "default_access_token_header")]
    pub access_token: String,
    #[serde(default)]
    pub pass_id_token: bool,
    #[serde(default = "default_id_token_header")]
    pub id_token: String,
    /// More incoming headers to strip, on top of the identity headers and `X-Gatehouse-*`.
    #[serde(default)]
    pub strip: Vec<String>,
    /// Strip other proxies' identity headers (`X-Forwarded-User`, `Remote-User`, ...).
    #[serde(default = "default_true")]
    pub strip_foreign_identity: bool,
    /// Send the email header for an email the IdP did not verify (off by default).
    #[serde(default)]
    pub pass_unverified_email: bool,
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
}

impl Default for HeadersSection {
    fn default() -> Self {
        Self {
            user: default_user_header(),
            email: default_email_header(),
            groups: default_groups_header(),
            preferred_username: default_preferred_username_header(),
            user_id: default_user_id_header(),
            roles: default_roles_header(),
            name: default_name_header(),
            attributes: Default::default(),
            pass_access_token: false,
            access_token: default_access_token_header(),
            pass_id_token: false,
            id_token: default_id_token_header(),
            strip: Vec::new(),
            strip_foreign_identity: true,
            pass_unverified_email: false,
            trusted_proxies: Vec::new(),
        }
    }
}

fn default_user_header() -> String {
    "X-Auth-Request-User".to_string()
}
fn default_email_header() -> String {
    "X-Auth-Request-Email".to_string()
}
fn default_groups_header() -> String {
    "X-Auth-Request-Groups".to_string()
}
fn default_preferred_username_header() -> String {
    "X-Auth-Request-Preferred-Username".to_string()
}
fn default_user_id_header() -> String {
    "X-Gatehouse-User-Id".to_string()
}
fn default_roles_header() -> String {
    "X-Gatehouse-Roles".to_string()
}
fn default_name_header() -> String {
    "X-Gatehouse-Name".to_string()
}
fn default_access_token_header() -> String {
    "X-Auth-Request-Access-Token".to_string()
}
fn default_id_token_header() -> String {
    "X-Gatehouse-Id-Token".to_string()
}

/// `[[upstreams]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    pub id: Option<String>,
    pub host: Option<String>,
    #[serde(default = "default_path_prefix")]
    pub path_prefix: String,
    pub url: String,
    #[serde(default)]
    pub preserve_host: bool,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: String,
    #[serde(default = "default_read_timeout")]
    pub read_timeout: String,
    /// The `aud` of the signed identity header sent to this upstream (default: its id).
    pub audience: Option<String>,
    /// TOTP for this upstream (`off`, `optional`, `required`), over the connection's and
    /// `[mfa] totp`.
    pub mfa: Option<String>,
    // Who may reach it (see `[[access]]`): every list that is set must be satisfied.
    /// `example.com` (that domain) or `.example.com` (its subdomains too); the email must be
    /// verified by the IdP (or the connection trusts its emails).
    #[serde(default)]
    pub allowed_email_domains: Vec<String>,
    /// Any one of these IdP groups.
    #[serde(default)]
    pub allowed_groups: Vec<String>,
    /// Any one of these local roles (JIT users only).
    #[serde(default)]
    pub allowed_roles: Vec<String>,
    #[serde(default)]
    pub allowed_connections: Vec<String>,
}

fn default_path_prefix() -> String {
    "/".to_string()
}
fn default_connect_timeout() -> String {
    "5s".to_string()
}
fn default_read_timeout() -> String {
    "60s".to_string()
}

/// `[[public]]`: a rule that lets requests through without authentication.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicSection {
    pub path: String,
    #[serde(default = "default_match", rename = "match")]
    pub match_kind: String,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default = "default_true")]
    pub case_sensitive: bool,
}

fn default_match() -> String {
    "exact".to_string()
}

/// `[[access]]`: extra rules for the protected requests whose path matches (all matching
/// rules apply, on top of the upstream's own).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessSection {
    pub path: String,
    #[serde(default = "default_match", rename = "match")]
    pub match_kind: String,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default = "default_true")]
    pub case_sensitive: bool,
    /// TOTP for the matching paths, over the upstream's (the strictest matching rule wins).
    pub mfa: Option<String>,
    /// `example.com` (that domain) or `.example.com` (its subdomains too); the email must be
    /// verified by the IdP (or the connection trusts its emails).
    #[serde(default)]
    pub allowed_email_domains: Vec<String>,
    /// Any one of these IdP groups.
    #[serde(default)]
    pub allowed_groups: Vec<String>,
    /// Any one of these local roles (JIT users only).
    #[serde(default)]
    pub allowed_roles: Vec<String>,
    #[serde(default)]
    pub allowed_connections: Vec<String>,
}

/// `[identity]`: the signed identity header (`X-Gatehouse-Identity`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentitySection {
    #[serde(default = "default_true")]
    pub signed_header: bool,
    /// `ES256` or `EdDSA`.
    #[serde(default = "default_signing_alg")]
    pub signing_alg: String,
    /// A PKCS#8 PEM private key; default: generated once into the data dir.
    pub signing_key_file: Option<String>,
    #[serde(default = "default_assertion_ttl")]
    pub assertion_ttl: String,
    /// The `iss` of the signed header; default `login.external_url`, else `gatehouse`.
    pub issuer: Option<String>,
}

impl Default for IdentitySection {
    fn default() -> Self {
        Self {
            signed_header: true,
            signing_alg: default_signing_alg(),
            signing_key_file: None,
            assertion_ttl: default_assertion_ttl(),
            issuer: None,
        }
    }
}

fn default_signing_alg() -> String {
    "ES256".to_string()
}
fn default_assertion_ttl() -> String {
    "5m".to_string()
}

/// `[admin]`: the admin API on the admin listener (`/api/users`), used by `gatehouse users`
/// while the server holds the store. Without a token the API is off.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    pub token: Option<String>,
    pub token_file: Option<String>,
    pub token_env: Option<String>,
}

/// `[store]`: which store backend keeps the records (the embedded redb file in `data_dir`, or
/// PostgreSQL), and where generated key files live.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    #[serde(default = "default_data_dir")]
    pub data_dir: String,
    /// `redb` (default) or `postgres`.
    #[serde(default = "default_backend")]
    pub backend: String,
    /// PostgreSQL: the connection URL, inline, as a file (`url_file`) or a variable (`url_env`).
    pub url: Option<String>,
    pub url_file: Option<String>,
    pub url_env: Option<String>,
    /// PostgreSQL: connections kept in the pool.
    #[serde(default = "default_pool_size")]
    pub pool_size: u32,
    /// PostgreSQL: how long cached sessions keep working while the database is unreachable.
    #[serde(default = "default_offline_grace")]
    pub offline_grace: String,
    /// PostgreSQL: apply the embedded migrations at `serve`.
    #[serde(default = "default_true")]
    pub auto_migrate: bool,
}

impl Default for StoreSection {
    fn default() -> Self {
        Self {
            data_dir: default_data_dir(),
            backend: default_backend(),
            url: None,
            url_file: None,
            url_env: None,
            pool_size: default_pool_size(),
            offline_grace: default_offline_grace(),
            auto_migrate: true,
        }
    }
}

fn default_backend() -> String {
    "redb".to_string()
}
fn default_pool_size() -> u32 {
    16
}
fn default_offline_grace() -> String {
    "30s".to_string()
}

fn default_data_dir() -> String {
    DEFAULT_DATA_DIR.to_string()
}

/// `[session]`: the session cookie.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionSection {
    #[serde(default = "default_cookie_name")]
    pub cookie_name: String,
    pub cookie_domain: Option<String>,
    #[serde(default = "default_cookie_path")]
    pub cookie_path: String,
    #[serde(default = "default_true")]
    pub cookie_secure: bool,
    /// Give the cookies the `__Host-` prefix when they are `Secure`, have no domain and path
    /// `/` (the browser then refuses them from another subdomain or over http).
    #[serde(default = "default_true")]
    pub cookie_host_prefix: bool,
    /// Base64 32-byte keys: the first seals, all open. Or `keys_file` / `keys_env`.
    #[serde(default)]
    pub keys: Vec<String>,
    pub keys_file: Option<String>,
    pub keys_env: Option<String>,
    #[serde(default = "default_session_lifetime")]
    pub lifetime: String,
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: String,
    #[serde(default = "default_login_timeout")]
    pub login_timeout: String,
}

impl Default for SessionSection {
    fn default() -> Self {
        Self {
            cookie_name: default_cookie_name(),
            cookie_domain: None,
            cookie_path: default_cookie_path(),
            cookie_secure: true,
            cookie_host_prefix: true,
            keys: Vec::new(),
            keys_file: None,
            keys_env: None,
            lifetime: default_session_lifetime(),
            idle_timeout: default_idle_timeout(),
            login_timeout: default_login_timeout(),
        }
    }
}

fn default_cookie_name() -> String {
    "_gatehouse".to_string()
}
fn default_cookie_path() -> String {
    "/".to_string()
}
fn default_session_lifetime() -> String {
    "12h".to_string()
}
fn default_idle_timeout() -> String {
    "1h".to_string()
}
fn default_login_timeout() -> String {
    "10m".to_string()
}

/// `[login]`: how sign-in starts and where it may return to.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginSection {
    /// The URL users reach Gatehouse at (`https://app.example.com`); by default taken from
    /// each request's scheme and host.
    pub external_url: Option<String>,
    pub default_connection: Option<String>,
    /// Hosts an absolute `rd` may point to; `.example.com` allows its subdomains too.
    #[serde(default)]
    pub allowed_redirect_domains: Vec<String>,
}

/// `[[connections]]`: one OpenID Connect identity provider.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionSection {
    pub id: String,
    pub display_name: Option<String>,
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Option<String>,
    pub client_secret_file: Option<String>,
    pub client_secret_env: Option<String>,
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub extra_auth_params: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub claims: ClaimsSection,
    #[serde(default = "default_true")]
    pub jit: bool,
    /// JIT: how a returning user's stored attributes follow the IdP: `override`,
    /// `preserve_local` or `none`.
    #[serde(default = "default_attribute_sync")]
    pub attribute_sync: String,
    /// JIT: link a first login to the local account with the same verified email.
    #[serde(default)]
    pub link_by_email: bool,
    /// Treat this IdP's emails as verified even without `email_verified`.
    #[serde(default)]
    pub trust_email: bool,
    /// TOTP at login for this connection's users, over `[mfa] totp`.
    pub mfa: Option<String>,
    #[serde(default)]
    pub allow_bearer: bool,
    /// Audiences a bearer token may carry; required with `allow_bearer` (no default).
    #[serde(default)]
    pub bearer_audiences: Vec<String>,
    /// Accept only RFC 9068 `at+jwt` bearer tokens.
    #[serde(default)]
    pub require_at_jwt: bool,
    /// `acr` values of bearer tokens that count as a second factor.
    #[serde(default)]
    pub bearer_mfa_acr: Vec<String>,
    #[serde(default)]
    pub fetch_userinfo: bool,
    pub ca_file: Option<String>,
}

fn default_attribute_sync() -> String {
    "override".to_string()
}

fn default_scopes() -> Vec<String> {
    ["openid", "email", "profile"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// Which claim feeds which identity field.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimsSection {
    #[serde(default = "default_username_claim")]
    pub username: String,
    #[serde(default = "default_email_claim")]
    pub email: String,
    #[serde(default = "default_groups_claim")]
    pub groups: String,
    #[serde(default = "default_name_claim")]
    pub name: String,
    /// More claims kept as attributes (stored with JIT, in the session without).
    #[serde(default)]
    pub attributes: Vec<String>,
}

impl Default for ClaimsSection {
    fn default() -> Self {
        Self {
            username: default_username_claim(),
            email: default_email_claim(),
            groups: default_groups_claim(),
            name: default_name_claim(),
            attributes: Vec::new(),
        }
    }
}

fn default_username_claim() -> String {
    "preferred_username".to_string()
}
fn default_email_claim() -> String {
    "email".to_string()
}
fn default_groups_claim() -> String {
    "groups".to_string()
}
fn default_name_claim() -> String {
    "name".to_string()
}
