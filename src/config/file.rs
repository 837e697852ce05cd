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
fn default_keepalive_pool() -> usize {
    128
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
    /// More incoming headers to strip, on top of the identity headers and `X-Gatehouse-*`.
    #[serde(default)]
    pub strip: Vec<String>,
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
            strip: Vec::new(),
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

/// `[store]`: where the embedded database lives.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    #[serde(default = "default_data_dir")]
    pub data_dir: String,
}

impl Default for StoreSection {
    fn default() -> Self {
        Self {
            data_dir: default_data_dir(),
        }
    }
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
    #[serde(default)]
    pub allow_bearer: bool,
    /// Audiences a bearer token may carry; default the client id.
    #[serde(default)]
    pub bearer_audiences: Vec<String>,
    #[serde(default)]
    pub fetch_userinfo: bool,
    pub ca_file: Option<String>,
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
}

impl Default for ClaimsSection {
    fn default() -> Self {
        Self {
            username: default_username_claim(),
            email: default_email_claim(),
            groups: default_groups_claim(),
            name: default_name_claim(),
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
