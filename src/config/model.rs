//! The validated config that the rest of Gatehouse sees. Never deserialized directly: it is
//! built from [`super::file::FileConfig`] by [`super::validate`], so every value here has been
//! checked (addresses parsed, header names valid, regexes compiled, durations read).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderName, Method};
use ipnet::IpNet;
use regex::Regex;

use crate::uri::path::{under_prefix, NormalPath};

#[derive(Debug, Clone)]
pub struct Config {
    pub server: Server,
    pub log: Log,
    pub headers: Headers,
    pub upstreams: Vec<Upstream>,
    pub public: Vec<PathRule>,
    pub data_dir: PathBuf,
    /// `[store] backend`: where records live (redb in `data_dir`, or PostgreSQL).
    pub store_backend: StoreBackend,
    pub session: Session,
    pub login: Login,
    pub connections: Vec<Connection>,
    /// `[[access]]` rules, in file order.
    pub access: Vec<AccessRule>,
    pub identity: IdentityHeader,
    pub admin: Admin,
    pub mfa: Mfa,
    pub limits: Limits,
    pub forward_auth: ForwardAuth,
    pub pages: Pages,
}

/// Per-client rates on the login endpoints (`None`: no limit) and the bounds of the in-memory
/// maps kept for clients that have not signed in yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub login_per_minute: Option<std::num::NonZeroU32>,
    pub mfa_per_minute: Option<std::num::NonZeroU32>,
    pub backchannel_per_minute: Option<std::num::NonZeroU32>,
    pub used_states: usize,
    pub pending_mfa: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            login_per_minute: std::num::NonZeroU32::new(300),
            mfa_per_minute: std::num::NonZeroU32::new(120),
            backchannel_per_minute: std::num::NonZeroU32::new(600),
            used_states: 100_000,
            pending_mfa: 10_000,
        }
    }
}

/// `[forward_auth]`: where the front proxy's subrequest says which request it asks about.
#[derive(Debug, Clone)]
pub struct ForwardAuth {
    /// The header the configured front proxy sets to the URI it serves.
    pub uri_header: HeaderName,
    /// The header it sets to that request's method.
    pub method_header: HeaderName,
}

impl ForwardAuth {
    /// The URI headers the common front proxies use.
    pub const KNOWN_URI_HEADERS: [&'static str; 2] = ["x-forwarded-uri", "x-original-uri"];
    /// The method headers the common front proxies use.
    pub const KNOWN_METHOD_HEADERS: [&'static str; 2] = ["x-forwarded-method", "x-original-method"];

    /// The other spellings of the URI header: when one comes with a different value, the
    /// request is refused (a client can add one the front proxy does not overwrite).
    pub fn other_uri_headers(&self) -> impl Iterator<Item = &'static str> + '_ {
        Self::KNOWN_URI_HEADERS
            .into_iter()
            .filter(|h| *h != self.uri_header.as_str())
    }

    /// The other spellings of the method header.
    pub fn other_method_headers(&self) -> impl Iterator<Item = &'static str> + '_ {
        Self::KNOWN_METHOD_HEADERS
            .into_iter()
            .filter(|h| *h != self.method_header.as_str())
    }
}

impl Default for ForwardAuth {
    fn default() -> Self {
        Self {
            uri_header: HeaderName::from_static("x-forwarded-uri"),
            method_header: HeaderName::from_static("x-forwarded-method"),
        }
    }
}

/// How much TOTP a login or a route asks for. Ordered: `Off < Optional < Required`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum MfaLevel {
    Off,
    /// Users who have enrolled are asked; nobody is made to enrol.
    Optional,
    /// Every local account must pass (enrolling first if it has none).
    Required,
}

impl MfaLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            MfaLevel::Off => "off",
            MfaLevel::Optional => "optional",
            MfaLevel::Required => "required",
        }
    }
}

/// What happens to users of a JIT-off connection (no local account, so no second factor)
/// where TOTP is required.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoLocalAccount {
    /// A 403 page that says which sign-in can satisfy the second factor.
    Deny,
    /// The conditional rule: MFA is enforced for local accounts only.
    Skip,
}

#[derive(Debug, Clone)]
pub struct Mfa {
    pub totp: MfaLevel,
    pub when_no_local_account: NoLocalAccount,
    pub issuer: String,
    /// Keys that seal TOTP secrets; `None`: from (or created in) `data_dir/store.keys`.
    pub keys: SessionKeys,
    pub lockout: LockoutPolicy,
    /// `[mfa] email_otp*`.
    pub email_otp: EmailOtp,
    /// `[smtp]`; present whenever `email_otp` is not `off`.
    pub smtp: Option<Smtp>,
}

impl Mfa {
    /// The level a login or route asks for when nothing overrides it: the stricter of the two
    /// factors' levels (either factor the account can use satisfies it).
    pub fn level(&self) -> MfaLevel {
        self.totp.max(self.email_otp.level)
    }
}

/// `[mfa] email_otp*`: codes mailed to the account's verified address.
#[derive(Debug, Clone)]
pub struct EmailOtp {
    pub level: MfaLevel,
    /// Digits, 6..=8.
    pub length: u32,
    pub ttl: Duration,
    pub resend_after: Duration,
    pub max_sends: u32,
}

impl Default for EmailOtp {
    fn default() -> Self {
        Self {
            level: MfaLevel::Off,
            length: 6,
            ttl: Duration::from_secs(300),
            resend_after: Duration::from_secs(30),
            max_sends: 5,
        }
    }
}

/// How the SMTP connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpSecurity {
    /// Plain text (loopback relays only).
    None,
    /// Plain connect, then `STARTTLS` (required).
    StartTls,
    /// TLS from the first byte (SMTPS).
    Tls,
}

/// `[smtp]`.
#[derive(Debug, Clone)]
pub struct Smtp {
    pub host: String,
    pub port: u16,
    pub security: SmtpSecurity,
    /// Checked to parse as a mailbox.
    pub from: String,
    /// User name and password for SMTP AUTH.
    pub credentials: Option<(String, Secret)>,
    /// PEM CA certificates (already read).
    pub ca_pem: Option<Vec<u8>>,
    pub timeout: Duration,
}

/// The admin API: off without a token.
#[derive(Debug, Clone, Default)]
pub struct Admin {
    pub token: Option<Secret>,
}

/// The signed identity header; `None` when turned off.
#[derive(Debug, Clone)]
pub struct IdentityHeader {
    pub signing: Option<Signing>,
}

#[derive(Debug, Clone)]
pub struct Signing {
    pub alg: SigningAlg,
    pub key_file: Option<PathBuf>,
    pub ttl: Duration,
    pub issuer: String,
}

/// An email domain an access rule allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailDomain {
    /// Lower case, no leading dot.
    pub domain: String,
    /// `.example.com` in the file: subdomains are allowed too.
    pub subdomains: bool,
}

/// Who may reach a route. Every list that is not empty must be satisfied; empty lists allow
/// everyone who is signed in.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    pub email_domains: Vec<EmailDomain>,
    pub groups: Vec<String>,
    pub roles: Vec<String>,
    pub connections: Vec<String>,
}

impl Rules {
    pub fn is_empty(&self) -> bool {
        self.email_domains.is_empty()
            && self.groups.is_empty()
            && self.roles.is_empty()
            && self.connections.is_empty()
    }
}

/// `[[access]]`: rules for the protected requests whose path matches.
#[derive(Debug, Clone)]
pub struct AccessRule {
    pub when: PathRule,
    pub rules: Rules,
    pub mfa: Option<MfaLevel>,
}

/// How a returning JIT user's stored attributes follow the IdP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttributeSync {
    /// IdP attributes replace the stored ones; locally added attributes are dropped.
    Override,
    /// IdP attributes are updated; local ones stay.
    PreserveLocal,
    /// Nothing changes after the account is created.
    None,
}

/// Keys that seal cookies: given in config, or `None` to load (or create) them in the data
/// directory.
#[derive(Clone)]
pub struct SessionKeys(pub Option<Vec<[u8; 32]>>);

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(keys) => write!(f, "SessionKeys({} configured)", keys.len()),
            None => write!(f, "SessionKeys(from the data dir)"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Session {
    /// The session cookie's name as sent: `__Host-` + the configured name when
    /// [`Self::host_prefix`]; every other Gatehouse cookie's name starts with it.
    pub cookie_name: String,
    /// The `__Host-` prefix is in use: every Gatehouse cookie then has `Path=/`.
    pub host_prefix: bool,
    pub cookie_domain: Option<String>,
    pub cookie_path: String,
    pub cookie_secure: bool,
    pub keys: SessionKeys,
    pub lifetime: Duration,
    pub idle_timeout: Duration,
    pub login_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct Login {
    /// `scheme://host[:port]`, no trailing slash.
    pub external_url: Option<String>,
    pub default_connection: Option<String>,
    pub allowed_redirect_domains: Vec<String>,
}

/// `[store]`: the backend that keeps the records.
#[derive(Debug, Clone)]
pub enum StoreBackend {
    /// The embedded redb file in `data_dir` (the default).
    Redb,
    /// A PostgreSQL database that several replicas share.
    Postgres(PostgresStore),
}

/// `[store] backend = "postgres"`: how to reach the database.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    /// The connection URL, its shape checked (it may hold a password; see
    /// [`super::postgres_url::redact`] before showing it).
    pub url: Secret,
    /// Connections kept in the pool (1..=1000).
    pub pool_size: u32,
    /// How long sessions already cached keep working while the database is unreachable.
    pub offline_grace: Duration,
    /// Apply the embedded migrations at `serve`.
    pub auto_migrate: bool,
}

/// A client secret, kept out of `Debug` output.
#[derive(Clone)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

#[derive(Debug, Clone)]
pub struct ClaimNames {
    pub username: String,
    pub email: String,
    pub groups: String,
    pub name: String,
    /// More claims kept as attributes.
    pub attributes: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Connection {
    pub id: String,
    pub display_name: String,
    /// Without a trailing slash.
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Secret,
    pub scopes: Vec<String>,
    pub extra_auth_params: Vec<(String, String)>,
    pub claims: ClaimNames,
    pub jit: bool,
    pub attribute_sync: AttributeSync,
    pub link_by_email: bool,
    pub trust_email: bool,
    /// TOTP at login, over `[mfa] totp`.
    pub mfa: Option<MfaLevel>,
    pub allow_bearer: bool,
    pub bearer_audiences: Vec<String>,
    /// Bearer tokens must be RFC 9068 `at+jwt`.
    pub require_at_jwt: bool,
    /// Bearer-token `acr` values that show a second factor.
    pub bearer_mfa_acr: Vec<String>,
    pub fetch_userinfo: bool,
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Server {
    pub listen: Vec<SocketAddr>,
    pub tls: Option<TlsListen>,
    pub admin_listen: SocketAddr,
    /// Already resolved: never 0.
    pub worker_threads: usize,
    pub shutdown_grace: Duration,
    pub upstream_keepalive_pool: usize,
    /// How often upstream host names are resolved again (at least 1 s).
    pub dns_refresh: Duration,
    /// `%25` + the escape of `.`, `/`, `\`, `%`, `;`, an unreserved or a control character
    /// in a path is refused (400).
    pub reject_double_encoding: bool,
    /// Protected routes are meant to be closed: no connection and no bearer is not an error.
    pub deny_all: bool,
    /// `/ready` is 503 until every identity provider is discovered (default: it is not).
    pub ready_requires_idp: bool,
    /// Deadlines and limits for client connections.
    pub clients: ClientLimits,
}

/// Deadlines and limits for client connections (`[server] client_*`, `max_connections*`,
/// `h2_max_concurrent_streams`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
    pub write_timeout: Duration,
    /// Already resolved: never 0.
    pub max_connections: usize,
    pub max_connections_per_ip: Option<usize>,
    pub h2_max_concurrent_streams: u32,
}

#[derive(Debug, Clone)]
pub struct TlsListen {
    pub listen: Vec<SocketAddr>,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct Log {
    pub format: LogFormat,
    /// A `tracing` filter directive, checked to parse.
    pub level: String,
    pub access_log: bool,
}

/// The headers Gatehouse sets towards the app, and which incoming headers it removes.
#[derive(Debug, Clone)]
pub struct Headers {
    pub user: HeaderName,
    pub email: HeaderName,
    pub groups: HeaderName,
    pub preferred_username: HeaderName,
    pub user_id: HeaderName,
    pub roles: HeaderName,
    pub name: HeaderName,
    /// Attribute name and the header it goes in.
    pub attributes: Vec<(String, HeaderName)>,
    /// Set when the access token / ID token is passed to the app.
    pub access_token: Option<HeaderName>,
    pub id_token: Option<HeaderName>,
    /// Extra names to strip from every incoming request.
    pub strip: Vec<HeaderName>,
    /// Strip other proxies' identity headers too (the proxy's header hygiene step).
    pub strip_foreign_identity: bool,
    /// Send the email header when the email is not verified (and the connection does not
    /// trust its emails).
    pub pass_unverified_email: bool,
    pub trusted_proxies: Vec<IpNet>,
}

impl Headers {
    /// Every header name Gatehouse owns: the incoming copies of these are always removed.
    /// (`X-Gatehouse-*` is owned as a prefix, see the proxy's header hygiene step.)
    pub fn owned_names(&self) -> Vec<HeaderName> {
        let mut names = vec![
            self.user.clone(),
            self.email.clone(),
            self.groups.clone(),
            self.preferred_username.clone(),
            self.user_id.clone(),
            self.roles.clone(),
            self.name.clone(),
        ];
        names.extend(self.attributes.iter().map(|(_, h)| h.clone()));
        names.extend(self.access_token.iter().cloned());
        names.extend(self.id_token.iter().cloned());
        names.extend(self.strip.iter().cloned());
        names
    }
}

/// How a request's `Host` selects an upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// Lower-case host name, no port.
    Exact(String),
    /// `*.example.com` kept as `.example.com`: matches any name that ends with it.
    Suffix(String),
}

/// Where an upstream listens, as the config wrote it. Nothing here has touched DNS:
/// `check-config` needs no network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamAddress {
    /// An IP literal and port: connected to as it is, never resolved.
    Ip(SocketAddr),
    /// A host name and port: resolved when the server starts (a name that does not resolve
    /// then stops the start) and again every `[server] dns_refresh`.
    Name { host: String, port: u16 },
}

impl UpstreamAddress {
    pub fn port(&self) -> u16 {
        match self {
            UpstreamAddress::Ip(addr) => addr.port(),
            UpstreamAddress::Name { port, .. } => *port,
        }
    }

    /// Whether it names this machine (a loopback address, or `localhost`).
    pub fn is_local(&self) -> bool {
        match self {
            UpstreamAddress::Ip(addr) => addr.ip().is_loopback(),
            UpstreamAddress::Name { host, .. } => host == "localhost",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Upstream {
    pub id: String,
    pub host: Option<HostMatch>,
    /// Starts with `/`; matched segment by segment.
    pub path_prefix: String,
    pub tls: bool,
    /// Where to connect: an IP address, or a host name the server resolves (config checks
    /// never do).
    pub address: UpstreamAddress,
    /// `host[:port]` of the target URL, sent as `Host` unless `preserve_host`.
    pub authority: String,
    /// The target's host name, for SNI and certificate checks.
    pub sni: String,
    pub preserve_host: bool,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    /// The `aud` of the signed identity header.
    pub audience: String,
    pub rules: Rules,
    pub mfa: Option<MfaLevel>,
}

#[derive(Debug, Clone)]
pub enum PathMatch {
    Exact(String),
    /// Matches the prefix itself and anything below it, segment by segment.
    Prefix(String),
    /// Anchored at both ends.
    Regex(Regex),
}

#[derive(Debug, Clone)]
pub struct PathRule {
    pub path: PathMatch,
    /// Empty means any method.
    pub methods: Vec<Method>,
    pub case_sensitive: bool,
}

impl PathRule {
    /// Whether this `[[public]]` or `[[access]]` rule covers a request with this method and
    /// (normalised) path.
    pub fn matches(&self, method: &Method, path: &str) -> bool {
        if !self.methods.is_empty() && !self.methods.contains(method) {
            return false;
        }
        match &self.path {
            PathMatch::Exact(p) if self.case_sensitive => path == p,
            PathMatch::Exact(p) => path.eq_ignore_ascii_case(p),
            PathMatch::Prefix(p) => under_prefix(path, p, self.case_sensitive),
            PathMatch::Regex(re) => re.is_match(path),
        }
    }

    /// Whether this `[[access]]` rule applies to the request: it matches the forwarded form
    /// or the match form (parameters removed) of the path, so no reading of the path escapes
    /// it.
    pub fn applies(&self, method: &Method, path: &NormalPath) -> bool {
        self.matches(method, path.match_form())
            || (path.has_parameters() && self.matches(method, path.as_str()))
    }
}

/// The signature algorithm of the identity assertion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningAlg {
    /// ECDSA over P-256 with SHA-256.
    Es256,
    /// Ed25519.
    EdDsa,
}

impl SigningAlg {
    /// The JOSE name: `ES256` or `EdDSA`.
    pub fn as_str(self) -> &'static str {
        match self {
            SigningAlg::Es256 => "ES256",
            SigningAlg::EdDsa => "EdDSA",
        }
    }
}

impl std::fmt::Display for SigningAlg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A signing algorithm name other than `ES256` or `EdDSA`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown identity signing algorithm {0:?}: expected \"ES256\" or \"EdDSA\"")]
pub struct UnknownSigningAlg(pub String);

impl std::str::FromStr for SigningAlg {
    type Err = UnknownSigningAlg;

    /// The JOSE names, exactly as JOSE spells them (`ES256`, `EdDSA`).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "ES256" => Ok(SigningAlg::Es256),
            "EdDSA" => Ok(SigningAlg::EdDsa),
            other => Err(UnknownSigningAlg(other.to_owned())),
        }
    }
}

/// Wrong codes in a row that lock the user out.
pub const DEFAULT_MAX_FAILURES: u32 = 5;
/// How long the lock lasts.
pub const DEFAULT_LOCK_FOR: Duration = Duration::from_secs(5 * 60);

/// How many failures lock a user out, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockoutPolicy {
    pub max_failures: u32,
    pub lock_for: Duration,
}

impl Default for LockoutPolicy {
    fn default() -> Self {
        LockoutPolicy {
            max_failures: DEFAULT_MAX_FAILURES,
            lock_for: DEFAULT_LOCK_FOR,
        }
    }
}

/// `[pages]`: the branding of Gatehouse's own pages, with the override files already read and
/// checked (so rendering never touches the disk).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pages {
    /// The site name in each page's header and `<title>`.
    pub title: Option<String>,
    /// An `https://` URL or an absolute path.
    pub logo_url: Option<String>,
    pub accent_color: Option<HexColor>,
    /// The contents of the files in `templates_dir`.
    pub overrides: PageOverrides,
}

/// The files of `[pages] templates_dir`: operator-trusted, each valid UTF-8 and at most
/// [`PageOverrides::MAX_FILE`] bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageOverrides {
    /// `style.css`: appended after the built-in style.
    pub style_css: Option<String>,
    /// `header.html`: inserted verbatim at the top of each page's body.
    pub header_html: Option<String>,
    /// `footer.html`: inserted verbatim at the end of each page's body.
    pub footer_html: Option<String>,
}

impl PageOverrides {
    /// The file names an override directory may hold.
    pub const FILES: [&'static str; 3] = ["style.css", "header.html", "footer.html"];
    /// The largest override file accepted.
    pub const MAX_FILE: u64 = 64 * 1024;
}

/// A CSS colour `#rrggbb`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HexColor(pub [u8; 3]);

impl HexColor {
    /// The page background in light mode.
    pub const LIGHT_BG: HexColor = HexColor([0xff, 0xff, 0xff]);
    /// The page background in dark mode.
    pub const DARK_BG: HexColor = HexColor([0x1a, 0x1a, 0x1a]);
    /// The contrast WCAG 2 AA asks of normal text.
    pub const MIN_TEXT_CONTRAST: f64 = 4.5;

    /// Whether this colour is readable as text on `background`.
    pub fn readable_on(&self, background: &HexColor) -> bool {
        self.contrast(background) >= Self::MIN_TEXT_CONTRAST
    }

    /// `#rgb` or `#rrggbb` (hex digits in either case).
    pub fn parse(text: &str) -> Option<Self> {
        let hex = text.strip_prefix('#')?;
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let digit = |i: usize, len: usize| u8::from_str_radix(&hex[i..i + len], 16).ok();
        match hex.len() {
            3 => Some(Self([
                digit(0, 1)? * 17,
                digit(1, 1)? * 17,
                digit(2, 1)? * 17,
            ])),
            6 => Some(Self([digit(0, 2)?, digit(2, 2)?, digit(4, 2)?])),
            _ => None,
        }
    }

    /// `#rrggbb`, lower case: always safe inside CSS.
    pub fn css(&self) -> String {
        let [r, g, b] = self.0;
        format!("#{r:02x}{g:02x}{b:02x}")
    }

    /// WCAG 2 relative luminance.
    pub fn luminance(&self) -> f64 {
        let channel = |c: u8| {
            let c = f64::from(c) / 255.0;
            if c <= 0.04045 {
                c / 12.92
            } else {
                ((c + 0.055) / 1.055).powf(2.4)
            }
        };
        let [r, g, b] = self.0;
        0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b)
    }

    /// WCAG 2 contrast ratio between two colours (1 to 21).
    pub fn contrast(&self, other: &HexColor) -> f64 {
        let (a, b) = (self.luminance(), other.luminance());
        let (hi, lo) = if a > b { (a, b) } else { (b, a) };
        (hi + 0.05) / (lo + 0.05)
    }
}
