//! From the file as written to the model the code uses. Every check runs, and every problem is
//! kept with its key path, so an operator sees the whole list at once.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::str::FromStr;

use http::{HeaderName, Method, Uri};
use ipnet::IpNet;
use regex::RegexBuilder;

use super::duration::parse_duration;
use super::file::{
    AccessSection, AdminSection, ConnectionSection, FileConfig, HeadersSection, IdentitySection,
    LimitsSection, LogSection, LoginSection, MfaSection, PublicSection, ServerSection,
    SessionSection, StoreSection, UpstreamSection,
};
use super::model::{
    AccessRule, Admin, AttributeSync, ClaimNames, ClientLimits, Config, Connection, EmailDomain,
    Headers, HostMatch, IdentityHeader, Limits, Log, LogFormat, Login, Mfa, MfaLevel,
    NoLocalAccount, PathMatch, PathRule, PostgresStore, Rules, Secret, Server, Session,
    SessionKeys, Signing, SigningAlg, StoreBackend, TlsListen, Upstream, UpstreamAddress,
};
use super::{ConfigError, ConfigErrors};

/// Collects problems while the checks go on.
#[derive(Default)]
struct Problems(Vec<ConfigError>);

impl Problems {
    fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            path: path.into(),
            message: message.into(),
        });
    }

    /// Keeps the value of `result`, or records its error under `path`.
    fn check<T>(&mut self, path: impl Into<String>, result: Result<T, String>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(message) => {
                self.add(path, message);
                None
            }
        }
    }
}

/// Checks everything in `file`; returns the model, or every problem found.
pub fn validate(file: FileConfig) -> Result<Config, ConfigErrors> {
    let mut p = Problems::default();
    let server = server(&file.server, &mut p);
    let log = log(&file.log, &mut p);
    let headers = headers(&file.headers, &mut p);
    if file.upstreams.is_empty() {
        p.add("upstreams", "at least one [[upstreams]] entry is needed");
    }
    let upstreams: Vec<Option<Upstream>> = file
        .upstreams
        .iter()
        .enumerate()
        .map(|(i, u)| upstream(i, u, &mut p))
        .collect();
    let mut seen_ids = std::collections::HashSet::new();
    for (i, u) in file.upstreams.iter().enumerate() {
        if let Some(id) = &u.id {
            if !seen_ids.insert(id) {
                p.add(
                    format!("upstreams[{i}].id"),
                    format!("`{id}` is used twice"),
                );
            }
        }
    }
    let public: Vec<Option<PathRule>> = file
        .public
        .iter()
        .enumerate()
        .map(|(i, r)| public_rule(i, r, &mut p))
        .collect();

    let session = session(&file.session, &mut p);
    let connections: Vec<Option<Connection>> = file
        .connections
        .iter()
        .enumerate()
        .map(|(i, c)| connection(i, c, &mut p))
        .collect();
    let mut seen_connections = std::collections::HashSet::new();
    for (i, c) in file.connections.iter().enumerate() {
        if !seen_connections.insert(c.id.as_str()) {
            p.add(
                format!("connections[{i}].id"),
                format!("`{}` is used twice", c.id),
            );
        }
    }
    let login = login(&file.login, &seen_connections, &mut p);
    let store_backend = store(&file.store, &mut p);
    for (i, u) in file.upstreams.iter().enumerate() {
        known_connections(
            &format!("upstreams[{i}].allowed_connections"),
            &u.allowed_connections,
            &seen_connections,
            &mut p,
        );
    }
    let access: Vec<Option<AccessRule>> = file
        .access
        .iter()
        .enumerate()
        .map(|(i, a)| access_rule(i, a, &seen_connections, &mut p))
        .collect();
    let identity = identity(&file.identity, &file.login, &mut p);
    let admin = admin(&file.admin, &mut p);
    let mfa = mfa(&file.mfa, file.smtp.as_ref(), &mut p);
    let limits = limits(&file.limits, &mut p);
    let forward_auth = forward_auth(&file.forward_auth, &mut p);
    let pages = pages(&file.pages, &mut p);

    match (
        server,
        log,
        headers,
        session,
        login,
        identity,
        mfa,
        store_backend,
    ) {
        (
            Some(server),
            Some(log),
            Some(headers),
            Some(session),
            Some(login),
            Some(identity),
            Some(mfa),
            Some(store_backend),
        ) if p.0.is_empty() => Ok(Config {
            server,
            log,
            headers,
            upstreams: upstreams.into_iter().flatten().collect(),
            public: public.into_iter().flatten().collect(),
            data_dir: PathBuf::from(&file.store.data_dir),
            store_backend,
            session,
            login,
            connections: connections.into_iter().flatten().collect(),
            access: access.into_iter().flatten().collect(),
            identity,
            admin,
            mfa,
            limits,
            forward_auth,
            pages,
        }),
        _ => Err(ConfigErrors(p.0)),
    }
}

fn socket_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = SocketAddr::from_str(text) {
        return Ok(addr);
    }
    text.to_socket_addrs()
        .map_err(|e| format!("`{text}` is not an address with a port ({e})"))?
        .next()
        .ok_or_else(|| format!("`{text}` resolves to no address"))
}

fn server(s: &ServerSection, p: &mut Problems) -> Option<Server> {
    let before = p.0.len();
    if s.listen.is_empty() && s.tls_listen.is_empty() {
        p.add(
            "server.listen",
            "no proxy listener: set listen or tls_listen",
        );
    }
    let listen: Vec<SocketAddr> = s
        .listen
        .iter()
        .enumerate()
        .filter_map(|(i, a)| p.check(format!("server.listen[{i}]"), socket_addr(a)))
        .collect();
    let tls_listen: Vec<SocketAddr> = s
        .tls_listen
        .iter()
        .enumerate()
        .filter_map(|(i, a)| p.check(format!("server.tls_listen[{i}]"), socket_addr(a)))
        .collect();
    let tls = match (&s.tls_cert, &s.tls_key) {
        _ if s.tls_listen.is_empty() => {
            if s.tls_cert.is_some() || s.tls_key.is_some() {
                p.add(
                    "server.tls_cert",
                    "tls_cert/tls_key are set but tls_listen is empty",
                );
            }
            None
        }
        (Some(cert), Some(key)) => {
            for (name, path) in [("tls_cert", cert), ("tls_key", key)] {
                if !std::path::Path::new(path).is_file() {
                    p.add(
                        format!("server.{name}"),
                        format!("`{path}` is not a readable file"),
                    );
                }
            }
            Some(TlsListen {
                listen: tls_listen,
                cert: PathBuf::from(cert),
                key: PathBuf::from(key),
            })
        }
        _ => {
            p.add(
                "server.tls_cert",
                "tls_listen needs both tls_cert and tls_key",
            );
            None
        }
    };
    let admin_listen = p.check("server.admin_listen", socket_addr(&s.admin_listen));
    let shutdown_grace = p.check("server.shutdown_grace", parse_duration(&s.shutdown_grace));
    if s.upstream_keepalive_pool == 0 {
        p.add("server.upstream_keepalive_pool", "must be at least 1");
    }
    let dns_refresh = p.check("server.dns_refresh", parse_duration(&s.dns_refresh));
    if dns_refresh.is_some_and(|d| d < MIN_DNS_REFRESH) {
        p.add("server.dns_refresh", "must be at least 1s");
    }
    let mut timeout = |key: &str, text: &str| {
        let d = p.check(format!("server.{key}"), parse_duration(text));
        if d.is_some_and(|d| d.is_zero()) {
            p.add(format!("server.{key}"), "must be more than 0");
        }
        d
    };
    let header_timeout = timeout("client_header_timeout", &s.client_header_timeout);
    let body_timeout = timeout("client_body_timeout", &s.client_body_timeout);
    let idle_timeout = timeout("client_idle_timeout", &s.client_idle_timeout);
    let write_timeout = timeout("client_write_timeout", &s.client_write_timeout);
    if s.h2_max_concurrent_streams == 0 {
        p.add("server.h2_max_concurrent_streams", "must be at least 1");
    }
    let worker_threads = match s.worker_threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    if p.0.len() > before {
        return None;
    }
    Some(Server {
        listen,
        tls,
        admin_listen: admin_listen?,
        worker_threads,
        shutdown_grace: shutdown_grace?,
        upstream_keepalive_pool: s.upstream_keepalive_pool,
        dns_refresh: dns_refresh?,
        clients: ClientLimits {
            header_timeout: header_timeout?,
            body_timeout: body_timeout?,
            idle_timeout: idle_timeout?,
            write_timeout: write_timeout?,
            max_connections: match s.max_connections {
                0 => default_max_connections(),
                n => n,
            },
            max_connections_per_ip: (s.max_connections_per_ip > 0)
                .then_some(s.max_connections_per_ip),
            h2_max_concurrent_streams: s.h2_max_concurrent_streams,
        },
        reject_double_encoding: s.reject_double_encoding,
        deny_all: s.deny_all,
        ready_requires_idp: s.ready_requires_idp,
    })
}

/// File descriptors kept back from client connections: listeners, the store, logs, the IdP
/// clients.
const FD_RESERVE: u64 = 64;

/// The default `max_connections`: half of what the open-files limit leaves after a reserve
/// (each proxied client connection may hold an upstream connection too), at least 16.
pub fn default_max_connections() -> usize {
    max_connections_for(open_files_limit())
}

/// `max_connections` for a given open-files limit (see [`default_max_connections`]).
pub fn max_connections_for(nofile: u64) -> usize {
    let usable = nofile.saturating_sub(FD_RESERVE) / 2;
    usize::try_from(usable).unwrap_or(usize::MAX).max(16)
}

/// The soft open-files limit of this process (1024 when it cannot be read, 65,536 when
/// unlimited).
fn open_files_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own and reads nothing else.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    match limit.rlim_cur {
        _ if !ok => 1024,
        libc::RLIM_INFINITY => 65_536,
        n => n,
    }
}

fn log(l: &LogSection, p: &mut Problems) -> Option<Log> {
    let format = match l.format.as_str() {
        "text" => Some(LogFormat::Text),
        "json" => Some(LogFormat::Json),
        other => {
            p.add("log.format", format!("`{other}` is not one of text, json"));
            None
        }
    };
    let level = p.check(
        "log.level",
        tracing_subscriber::EnvFilter::builder()
            .parse(&l.level)
            .map(|_| l.level.clone())
            .map_err(|e| format!("`{}` is not a log filter ({e})", l.level)),
    );
    Some(Log {
        format: format?,
        level: level?,
        access_log: l.access_log,
    })
}

fn header_name(text: &str) -> Result<HeaderName, String> {
    HeaderName::from_str(text).map_err(|_| format!("`{text}` is not a valid header name"))
}

fn headers(h: &HeadersSection, p: &mut Problems) -> Option<Headers> {
    let before = p.0.len();
    let mut named = |key: &str, value: &str| p.check(format!("headers.{key}"), header_name(value));
    let user = named("user", &h.user);
    let email = named("email", &h.email);
    let groups = named("groups", &h.groups);
    let preferred_username = named("preferred_username", &h.preferred_username);
    let user_id = named("user_id", &h.user_id);
    let roles = named("roles", &h.roles);
    let name = named("name", &h.name);
    let access_token = named("access_token", &h.access_token);
    let id_token = named("id_token", &h.id_token);
    let attributes: Vec<(String, HeaderName)> = h
        .attributes
        .iter()
        .filter_map(|(attr, header)| {
            p.check(format!("headers.attributes.{attr}"), header_name(header))
                .map(|n| (attr.clone(), n))
        })
        .collect();
    let strip: Vec<HeaderName> = h
        .strip
        .iter()
        .enumerate()
        .filter_map(|(i, n)| p.check(format!("headers.strip[{i}]"), header_name(n)))
        .collect();
    let trusted_proxies: Vec<IpNet> = h
        .trusted_proxies
        .iter()
        .enumerate()
        .filter_map(|(i, cidr)| {
            let parsed = IpNet::from_str(cidr)
                .or_else(|_| std::net::IpAddr::from_str(cidr).map(IpNet::from))
                .map_err(|_| format!("`{cidr}` is not an IP address or CIDR block"));
            p.check(format!("headers.trusted_proxies[{i}]"), parsed)
        })
        .collect();
    if p.0.len() > before {
        return None;
    }
    Some(Headers {
        user: user?,
        email: email?,
        groups: groups?,
        preferred_username: preferred_username?,
        user_id: user_id?,
        roles: roles?,
        name: name?,
        attributes,
        access_token: h.pass_access_token.then_some(access_token?),
        id_token: h.pass_id_token.then_some(id_token?),
        strip,
        strip_foreign_identity: h.strip_foreign_identity,
        pass_unverified_email: h.pass_unverified_email,
        trusted_proxies,
    })
}

/// `[forward_auth]`: any valid header name; the model falls back to the defaults when a name
/// is bad (the problem is recorded, so no config is returned).
fn forward_auth(
    f: &super::file::ForwardAuthSection,
    p: &mut Problems,
) -> super::model::ForwardAuth {
    let defaults = super::model::ForwardAuth::default();
    let uri_header = p
        .check("forward_auth.uri_header", header_name(&f.uri_header))
        .unwrap_or(defaults.uri_header);
    let method_header = p
        .check("forward_auth.method_header", header_name(&f.method_header))
        .unwrap_or(defaults.method_header);
    super::model::ForwardAuth {
        uri_header,
        method_header,
    }
}

/// `[pages]`: a plain one-line title, a logo at `https://` or an absolute path, a hex accent
/// colour, and an override directory whose files are read and checked here (so `check-config`
/// reports them and serving never reads the disk).
fn pages(f: &super::file::PagesSection, p: &mut Problems) -> super::model::Pages {
    use super::model::{HexColor, PageOverrides, Pages};
    let title = f.title.clone().and_then(|t| {
        p.check(
            "pages.title",
            if t.trim().is_empty() || t.chars().count() > 100 || t.chars().any(char::is_control) {
                Err("must be 1 to 100 characters on one line".to_string())
            } else {
                Ok(t)
            },
        )
    });
    let logo_url = f
        .logo_url
        .clone()
        .and_then(|u| p.check("pages.logo_url", logo_url(&u).map(|()| u)));
    let accent_color = f.accent_color.as_deref().and_then(|c| {
        p.check(
            "pages.accent_color",
            HexColor::parse(c)
                .ok_or_else(|| format!("{c:?} is not a CSS hex colour (#rgb or #rrggbb)")),
        )
    });
    let overrides = match &f.templates_dir {
        Some(dir) => page_overrides(dir, p),
        None => PageOverrides::default(),
    };
    Pages {
        title,
        logo_url,
        accent_color,
        overrides,
    }
}

/// A logo address: `https://host/...` or an absolute path, no quotes, spaces or controls.
fn logo_url(url: &str) -> Result<(), String> {
    let plain = !url.is_empty()
        && url
            .chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '"' | '\'' | '<' | '>' | '\\'));
    let https = url
        .strip_prefix("https://")
        .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'));
    let path = url.starts_with('/') && !url.starts_with("//");
    if plain && (https || path) {
        Ok(())
    } else {
        Err(format!(
            "{url:?} must be an https:// URL or an absolute path (no spaces or quotes)"
        ))
    }
}

/// Reads `[pages] templates_dir`: only the known file names, each valid UTF-8 and small.
fn page_overrides(dir: &std::path::Path, p: &mut Problems) -> super::model::PageOverrides {
    use super::model::PageOverrides;
    let mut out = PageOverrides::default();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            p.add(
                "pages.templates_dir",
                format!("cannot read {}: {e}", dir.display()),
            );
            return out;
        }
    };
    let allowed = PageOverrides::FILES.join(", ");
    let mut names: Vec<_> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
    names.sort();
    for path in names {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let key = format!("pages.templates_dir/{name}");
        let slot = match name.as_str() {
            "style.css" => &mut out.style_css,
            "header.html" => &mut out.header_html,
            "footer.html" => &mut out.footer_html,
            _ => {
                p.add(key, format!("unknown file; allowed: {allowed}"));
                continue;
            }
        };
        let text = std::fs::metadata(&path)
            .map_err(|e| e.to_string())
            .and_then(|m| {
                if !m.is_file() {
                    Err("is not a regular file".to_string())
                } else if m.len() > PageOverrides::MAX_FILE {
                    Err(format!(
                        "is {} bytes, more than {}",
                        m.len(),
                        PageOverrides::MAX_FILE
                    ))
                } else {
                    std::fs::read(&path).map_err(|e| e.to_string())
                }
            })
            .and_then(|bytes| String::from_utf8(bytes).map_err(|_| "is not UTF-8".to_string()));
        let text = text.and_then(|t| {
            if name == "style.css" && t.to_ascii_lowercase().contains("</style") {
                Err("must not contain </style".to_string())
            } else {
                Ok(t)
            }
        });
        *slot = p.check(key, text);
    }
    out
}

fn host_match(text: &str) -> Result<HostMatch, String> {
    let lower = text.to_ascii_lowercase();
    let (suffix, name) = match lower.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, lower.as_str()),
    };
    let valid = !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if !valid {
        return Err(format!("`{text}` is not a host name or `*.suffix`"));
    }
    Ok(if suffix {
        HostMatch::Suffix(format!(".{name}"))
    } else {
        HostMatch::Exact(name.to_string())
    })
}

/// Checks a configured path: absolute, no glob characters, no path parameters, and already
/// in the normalized form requests are compared in, so a rule can never name a path no
/// request can have.
fn rule_path(text: &str) -> Result<String, String> {
    if let Some(glob) = text.chars().find(|c| matches!(c, '*' | '?' | '[')) {
        let base = text
            .split(['*', '?', '['])
            .next()
            .unwrap_or("/")
            .trim_end_matches('/');
        let base = if base.is_empty() { "/" } else { base };
        return Err(format!(
            "`{text}` holds `{glob}`, which is matched literally here (it is not a glob), so \
             the rule would never match: for `{base}` and everything below it write \
             path = \"{base}\" with match = \"prefix\" (path_prefix = \"{base}\" for an \
             upstream), or use match = \"regex\""
        ));
    }
    if text.contains(';') {
        return Err(format!(
            "`{text}` holds `;`: path parameters are removed before matching, so the rule \
             would never match; remove the `;...` part"
        ));
    }
    match crate::uri::path::normalize(text) {
        Ok(normal) if normal.as_str() == text => Ok(text.to_string()),
        Ok(normal) => Err(format!(
            "`{text}` is not normalized; write it as `{}`",
            normal.as_str()
        )),
        Err(e) => Err(format!("`{text}` is not a valid path ({e})")),
    }
}

fn upstream(i: usize, u: &UpstreamSection, p: &mut Problems) -> Option<Upstream> {
    let at = |key: &str| format!("upstreams[{i}].{key}");
    let before = p.0.len();
    let host = u
        .host
        .as_deref()
        .and_then(|h| p.check(at("host"), host_match(h)));
    let path_prefix = p.check(at("path_prefix"), rule_path(&u.path_prefix));
    let connect_timeout = p.check(at("connect_timeout"), parse_duration(&u.connect_timeout));
    let read_timeout = p.check(at("read_timeout"), parse_duration(&u.read_timeout));
    let target = p.check(at("url"), target(&u.url));
    let mfa = u
        .mfa
        .as_deref()
        .and_then(|m| p.check(at("mfa"), mfa_level(m)));
    let rules = rules(
        &at(""),
        &u.allowed_email_domains,
        &u.allowed_groups,
        &u.allowed_roles,
        &u.allowed_connections,
        p,
    );
    if let Some(id) = &u.id {
        if id.is_empty()
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            p.add(
                at("id"),
                format!("`{id}` may hold only letters, digits, `-`, `_` and `.`"),
            );
        }
    }
    if p.0.len() > before {
        return None;
    }
    let (tls, address, authority, sni) = target?;
    let id = u.id.clone().unwrap_or_else(|| format!("upstream-{i}"));
    Some(Upstream {
        audience: u.audience.clone().unwrap_or_else(|| id.clone()),
        rules,
        mfa,
        id,
        host,
        path_prefix: path_prefix?,
        tls,
        address,
        authority,
        sni,
        preserve_host: u.preserve_host,
        connect_timeout: connect_timeout?,
        read_timeout: read_timeout?,
    })
}

/// The shortest `[server] dns_refresh`: a name is never looked up more often than this.
pub const MIN_DNS_REFRESH: std::time::Duration = std::time::Duration::from_secs(1);

/// Reads an upstream URL into (tls, address, authority, host name). Only its shape is
/// checked: a host name is kept as a name, never resolved here (the server resolves it).
fn target(url: &str) -> Result<(bool, UpstreamAddress, String, String), String> {
    let uri = Uri::from_str(url).map_err(|e| format!("`{url}` is not a URL ({e})"))?;
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(format!("`{url}` must start with http:// or https://")),
    };
    let authority = uri
        .authority()
        .ok_or_else(|| format!("`{url}` has no host"))?;
    if authority.as_str().contains('@') {
        return Err(format!("`{url}` must not carry user information"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!(
            "`{url}` has a path or query; requests keep their own path (use path_prefix to route)"
        ));
    }
    if !crate::uri::host::is_valid(authority.as_str()) {
        return Err(format!("`{url}` does not name a valid host"));
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let address = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => UpstreamAddress::Ip(SocketAddr::new(ip, port)),
        Err(_) => UpstreamAddress::Name {
            host: host.to_ascii_lowercase(),
            port,
        },
    };
    Ok((
        tls,
        address,
        authority.as_str().to_string(),
        host.to_string(),
    ))
}

fn public_rule(i: usize, r: &PublicSection, p: &mut Problems) -> Option<PathRule> {
    path_rule(
        &format!("public[{i}]"),
        &r.path,
        &r.match_kind,
        &r.methods,
        r.case_sensitive,
        p,
    )
}

fn access_rule(
    i: usize,
    a: &AccessSection,
    connections: &std::collections::HashSet<&str>,
    p: &mut Problems,
) -> Option<AccessRule> {
    let at = format!("access[{i}]");
    known_connections(
        &format!("{at}.allowed_connections"),
        &a.allowed_connections,
        connections,
        p,
    );
    let rules = rules(
        &format!("{at}."),
        &a.allowed_email_domains,
        &a.allowed_groups,
        &a.allowed_roles,
        &a.allowed_connections,
        p,
    );
    let mfa = a
        .mfa
        .as_deref()
        .and_then(|m| p.check(format!("{at}.mfa"), mfa_level(m)));
    if rules.is_empty() && a.mfa.is_none() {
        p.add(
            &at,
            "does nothing: set mfa, allowed_email_domains, allowed_groups, allowed_roles or allowed_connections",
        );
    }
    let when = path_rule(&at, &a.path, &a.match_kind, &a.methods, a.case_sensitive, p)?;
    Some(AccessRule { when, rules, mfa })
}

fn known_connections(
    at: &str,
    named: &[String],
    connections: &std::collections::HashSet<&str>,
    p: &mut Problems,
) {
    for (j, id) in named.iter().enumerate() {
        if !connections.contains(id.as_str()) {
            p.add(format!("{at}[{j}]"), format!("no connection has id `{id}`"));
        }
    }
}

/// An email domain rule: `example.com`, or `.example.com` for its subdomains too.
fn email_domain(text: &str) -> Result<EmailDomain, String> {
    let (subdomains, name) = match text.strip_prefix('.') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    match host_match(name) {
        Ok(HostMatch::Exact(domain)) => Ok(EmailDomain { domain, subdomains }),
        _ => Err(format!(
            "`{text}` is not a domain (`example.com`, or `.example.com` with subdomains)"
        )),
    }
}

/// `prefix` is the key path of the section with its trailing dot (`upstreams[0].`).
fn rules(
    prefix: &str,
    domains: &[String],
    groups: &[String],
    roles: &[String],
    connections: &[String],
    p: &mut Problems,
) -> Rules {
    let email_domains = domains
        .iter()
        .enumerate()
        .filter_map(|(j, d)| {
            p.check(
                format!("{prefix}allowed_email_domains[{j}]"),
                email_domain(d),
            )
        })
        .collect();
    for (key, list) in [
        ("allowed_groups", groups),
        ("allowed_roles", roles),
        ("allowed_connections", connections),
    ] {
        for (j, v) in list.iter().enumerate() {
            if v.trim().is_empty() {
                p.add(format!("{prefix}{key}[{j}]"), "must not be empty");
            }
        }
    }
    Rules {
        email_domains,
        groups: groups.to_vec(),
        roles: roles.to_vec(),
        connections: connections.to_vec(),
    }
}

/// A path matcher as `[[public]]` and `[[access]]` write it; `at` is the section's key path.
fn path_rule(
    at: &str,
    path_text: &str,
    match_kind: &str,
    methods: &[String],
    case_sensitive: bool,
    p: &mut Problems,
) -> Option<PathRule> {
    let at = |key: &str| format!("{at}.{key}");
    let before = p.0.len();
    let path = match match_kind {
        "exact" => p
            .check(at("path"), rule_path(path_text))
            .map(PathMatch::Exact),
        "prefix" => p
            .check(at("path"), rule_path(path_text))
            .map(PathMatch::Prefix),
        "regex" => p
            .check(
                at("path"),
                RegexBuilder::new(&format!("^(?:{path_text})$"))
                    .case_insensitive(!case_sensitive)
                    .build()
                    .map_err(|e| format!("`{path_text}` is not a regex ({e})")),
            )
            .map(PathMatch::Regex),
        other => {
            p.add(
                at("match"),
                format!("`{other}` is not one of exact, prefix, regex"),
            );
            None
        }
    };
    let methods: Vec<Method> = methods
        .iter()
        .enumerate()
        .filter_map(|(j, m)| {
            let parsed = Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                .map_err(|_| format!("`{m}` is not an HTTP method"));
            p.check(at(&format!("methods[{j}]")), parsed)
        })
        .collect();
    if p.0.len() > before {
        return None;
    }
    let path = match path? {
        PathMatch::Exact(s) if !case_sensitive => PathMatch::Exact(s.to_ascii_lowercase()),
        PathMatch::Prefix(s) if !case_sensitive => PathMatch::Prefix(s.to_ascii_lowercase()),
        other => other,
    };
    Some(PathRule {
        path,
        methods,
        case_sensitive,
    })
}

/// Reads a secret given inline, as a file (`<key>_file`) or as an environment variable
/// (`<key>_env`): exactly one of the three.
fn secret(
    p: &mut Problems,
    path: &str,
    inline: &Option<String>,
    file: &Option<String>,
    env: &Option<String>,
) -> Option<String> {
    match (inline, file, env) {
        (Some(value), None, None) => Some(value.clone()),
        (None, Some(file), None) => p.check(
            format!("{path}_file"),
            std::fs::read_to_string(file)
                .map(|s| s.trim().to_string())
                .map_err(|e| format!("cannot read `{file}`: {e}")),
        ),
        (None, None, Some(var)) => p.check(
            format!("{path}_env"),
            std::env::var(var).map_err(|_| format!("environment variable `{var}` is not set")),
        ),
        (None, None, None) => {
            p.add(
                path,
                format!("missing: set {path}, {path}_file or {path}_env"),
            );
            None
        }
        _ => {
            p.add(path, "set only one of the value, `_file` and `_env`");
            None
        }
    }
}

fn session_key(text: &str) -> Result<[u8; 32], String> {
    use base64::Engine;
    let text = text.trim();
    let engines = [
        base64::engine::general_purpose::STANDARD,
        base64::engine::general_purpose::URL_SAFE,
        base64::engine::general_purpose::STANDARD_NO_PAD,
        base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ];
    let bytes = engines
        .iter()
        .find_map(|e| e.decode(text).ok())
        .ok_or("a key is not base64 (make one with `openssl rand -base64 32`)")?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("a key must be 32 bytes, this one is {}", b.len()))
}

/// Sealing keys given as `<section>.keys`, `keys_file` or `keys_env` (one of them, or none:
/// `None`, to load or create them in the data directory).
fn sealing_keys(
    section: &str,
    keys: &[String],
    keys_file: &Option<String>,
    keys_env: &Option<String>,
    p: &mut Problems,
) -> Option<Vec<[u8; 32]>> {
    let before = p.0.len();
    let lines = |text: &str| -> Vec<String> {
        text.split(|c: char| c == ',' || c.is_whitespace())
            .filter(|k| !k.is_empty())
            .map(str::to_string)
            .collect()
    };
    let key_path = |key: &str| format!("{section}.{key}");
    let (path, texts) = match (keys, keys_file, keys_env) {
        ([], None, None) => (key_path("keys"), None),
        (keys, None, None) => (key_path("keys"), Some(keys.to_vec())),
        ([], Some(file), None) => (
            key_path("keys_file"),
            p.check(
                key_path("keys_file"),
                crate::private_file::check(std::path::Path::new(file)).and_then(|()| {
                    std::fs::read_to_string(file)
                        .map(|t| lines(&t))
                        .map_err(|e| format!("cannot read `{file}`: {e}"))
                }),
            ),
        ),
        ([], None, Some(var)) => (
            key_path("keys_env"),
            p.check(
                key_path("keys_env"),
                std::env::var(var)
                    .map(|t| lines(&t))
                    .map_err(|_| format!("environment variable `{var}` is not set")),
            ),
        ),
        _ => {
            p.add(
                key_path("keys"),
                "set only one of keys, keys_file and keys_env",
            );
            (key_path("keys"), None)
        }
    };
    let keys = texts.map(|texts| {
        texts
            .iter()
            .enumerate()
            .filter_map(|(i, t)| p.check(format!("{path}[{i}]"), session_key(t)))
            .collect::<Vec<_>>()
    });
    if keys.as_ref().is_some_and(|k| k.is_empty()) && p.0.len() == before {
        p.add(path, "no key given");
    }
    keys
}

fn mfa_level(text: &str) -> Result<MfaLevel, String> {
    match text {
        "off" => Ok(MfaLevel::Off),
        "optional" => Ok(MfaLevel::Optional),
        "required" => Ok(MfaLevel::Required),
        other => Err(format!("`{other}` is not one of off, optional, required")),
    }
}

/// `[smtp]`.
fn smtp(s: &super::file::SmtpSection, p: &mut Problems) -> Option<super::model::Smtp> {
    use super::model::SmtpSecurity;
    let before = p.0.len();
    if s.host.trim().is_empty() || s.host.contains(['/', ' ', ':']) && !s.host.starts_with('[') {
        p.add(
            "smtp.host",
            "must be a host name or address (the port goes in smtp.port)",
        );
    }
    let security = match s.security.as_str() {
        "none" => Some(SmtpSecurity::None),
        "starttls" => Some(SmtpSecurity::StartTls),
        "tls" => Some(SmtpSecurity::Tls),
        other => {
            p.add(
                "smtp.security",
                format!("`{other}` is not one of none, starttls, tls"),
            );
            None
        }
    };
    if s.from.parse::<lettre::message::Mailbox>().is_err() {
        p.add(
            "smtp.from",
            format!(
                "`{}` is not a mail address (e.g. `Gatehouse <no-reply@example.com>`)",
                s.from
            ),
        );
    }
    let password = if s.password.is_some() || s.password_file.is_some() || s.password_env.is_some()
    {
        secret(
            p,
            "smtp.password",
            &s.password,
            &s.password_file,
            &s.password_env,
        )
    } else {
        None
    };
    let credentials = match (&s.username, password) {
        (Some(user), Some(pw)) => Some((user.clone(), Secret(pw))),
        (None, None) => None,
        (Some(_), None)
            if s.password.is_none() && s.password_file.is_none() && s.password_env.is_none() =>
        {
            p.add(
                "smtp.password",
                "smtp.username is set: set smtp.password, smtp.password_file or smtp.password_env",
            );
            None
        }
        (None, Some(_)) => {
            p.add("smtp.username", "a password is set: set the user name too");
            None
        }
        _ => None,
    };
    let ca_pem = s.ca_file.as_ref().and_then(|f| {
        p.check(
            "smtp.ca_file",
            std::fs::read(f).map_err(|e| format!("cannot read `{f}`: {e}")),
        )
    });
    let timeout = p.check("smtp.timeout", parse_duration(&s.timeout));
    if timeout.is_some_and(|t| t.is_zero()) {
        p.add("smtp.timeout", "must be more than zero");
    }
    if p.0.len() > before {
        return None;
    }
    let security = security?;
    Some(super::model::Smtp {
        host: s.host.clone(),
        port: s.port.unwrap_or(match security {
            SmtpSecurity::None => 25,
            SmtpSecurity::StartTls => 587,
            SmtpSecurity::Tls => 465,
        }),
        security,
        from: s.from.clone(),
        credentials,
        ca_pem,
        timeout: timeout?,
    })
}

/// `[mfa] email_otp*`.
fn email_otp(m: &MfaSection, p: &mut Problems) -> Option<super::model::EmailOtp> {
    let before = p.0.len();
    let level = p.check("mfa.email_otp", mfa_level(&m.email_otp));
    if !(6..=8).contains(&m.email_otp_length) {
        p.add("mfa.email_otp_length", "must be 6, 7 or 8 digits");
    }
    let ttl = p.check("mfa.email_otp_ttl", parse_duration(&m.email_otp_ttl));
    if ttl.is_some_and(|t| t.is_zero()) {
        p.add("mfa.email_otp_ttl", "must be more than zero");
    }
    let resend_after = p.check(
        "mfa.email_otp_resend_after",
        parse_duration(&m.email_otp_resend_after),
    );
    if m.email_otp_max_sends == 0 {
        p.add("mfa.email_otp_max_sends", "must be at least 1");
    }
    if p.0.len() > before {
        return None;
    }
    Some(super::model::EmailOtp {
        level: level?,
        length: m.email_otp_length,
        ttl: ttl?,
        resend_after: resend_after?,
        max_sends: m.email_otp_max_sends,
    })
}

fn mfa(
    m: &MfaSection,
    smtp_section: Option<&super::file::SmtpSection>,
    p: &mut Problems,
) -> Option<Mfa> {
    let before = p.0.len();
    let email_otp = email_otp(m, p);
    let smtp = smtp_section.and_then(|s| smtp(s, p));
    if email_otp.as_ref().is_some_and(|e| e.level != MfaLevel::Off) && smtp_section.is_none() {
        p.add(
            "mfa.email_otp",
            "Email OTP is on but there is no [smtp] section to send the codes through",
        );
    }
    let totp = p.check("mfa.totp", mfa_level(&m.totp));
    let when_no_local_account = match m.when_no_local_account.as_str() {
        "deny" => Some(NoLocalAccount::Deny),
        "skip" => Some(NoLocalAccount::Skip),
        other => {
            p.add(
                "mfa.when_no_local_account",
                format!("`{other}` is not one of deny, skip"),
            );
            None
        }
    };
    let keys = sealing_keys("mfa", &m.keys, &m.keys_file, &m.keys_env, p);
    let lock_for = p.check("mfa.lockout", parse_duration(&m.lockout));
    if m.max_failures == 0 {
        p.add("mfa.max_failures", "must be at least 1");
    }
    if m.issuer.is_empty() || m.issuer.contains(':') {
        p.add("mfa.issuer", "must be a name without `:`");
    }
    if p.0.len() > before {
        return None;
    }
    Some(Mfa {
        totp: totp?,
        when_no_local_account: when_no_local_account?,
        issuer: m.issuer.clone(),
        keys: SessionKeys(keys),
        lockout: crate::config::model::LockoutPolicy {
            max_failures: m.max_failures,
            lock_for: lock_for?,
        },
        email_otp: email_otp?,
        smtp,
    })
}

fn session(s: &SessionSection, p: &mut Problems) -> Option<Session> {
    let before = p.0.len();
    let keys = sealing_keys("session", &s.keys, &s.keys_file, &s.keys_env, p);
    if s.cookie_name.is_empty()
        || !s
            .cookie_name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
    {
        p.add(
            "session.cookie_name",
            "may hold only letters, digits, `_`, `-` and `.`",
        );
    }
    if !s.cookie_path.starts_with('/') {
        p.add("session.cookie_path", "must start with /");
    }
    let lifetime = p.check("session.lifetime", parse_duration(&s.lifetime));
    let idle_timeout = p.check("session.idle_timeout", parse_duration(&s.idle_timeout));
    let login_timeout = p.check("session.login_timeout", parse_duration(&s.login_timeout));
    if p.0.len() > before {
        return None;
    }
    let cookie_domain = s.cookie_domain.clone().filter(|d| !d.is_empty());
    // A `__Host-` cookie must be Secure, without Domain, with Path=/ (RFC 6265bis).
    let host_prefix = s.cookie_host_prefix
        && s.cookie_secure
        && cookie_domain.is_none()
        && s.cookie_path == "/"
        && !s.cookie_name.starts_with("__");
    Some(Session {
        cookie_name: if host_prefix {
            format!("__Host-{}", s.cookie_name)
        } else {
            s.cookie_name.clone()
        },
        host_prefix,
        cookie_domain,
        cookie_path: s.cookie_path.clone(),
        cookie_secure: s.cookie_secure,
        keys: SessionKeys(keys),
        lifetime: lifetime?,
        idle_timeout: idle_timeout?,
        login_timeout: login_timeout?,
    })
}

fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// An issuer: a base URL (see [`base_url`]) that the discovery document's `issuer` can equal,
/// so not the discovery document's own URL and no query, fragment or user information.
fn issuer_url(text: &str) -> Result<String, String> {
    if let Some(at) = text.find("/.well-known/") {
        return Err(format!(
            "`{text}` is a metadata document's URL, not the issuer: write issuer = \"{}\" \
             (Gatehouse appends /.well-known/openid-configuration itself)",
            &text[..at]
        ));
    }
    if let Some(at) = text.find('#') {
        return Err(format!(
            "`{text}` has a fragment, which the discovery document's `issuer` never has: \
             write issuer = \"{}\"",
            &text[..at]
        ));
    }
    if let Some(at) = text.find('?') {
        return Err(format!(
            "`{text}` has a query, which the discovery document's `issuer` never has: \
             write issuer = \"{}\"",
            &text[..at]
        ));
    }
    if text.trim() != text {
        return Err(format!(
            "`{text}` has spaces around it: write issuer = \"{}\"",
            text.trim()
        ));
    }
    if let Some((scheme, rest)) = text.split_once("://") {
        let authority = rest.split('/').next().unwrap_or("");
        if let Some((_, host)) = authority.rsplit_once('@') {
            return Err(format!(
                "`{text}` carries user information, which the discovery document's `issuer` \
                 never has: write issuer = \"{scheme}://{host}{}\"",
                &rest[authority.len()..]
            ));
        }
    }
    // Kept exactly as written: discovery compares the document's `issuer` with it to the
    // letter, and some IdPs (Auth0) name theirs with a trailing `/`.
    base_url(text, true).map(|_| text.to_string()).map_err(|e| {
        format!(
            "{e}; the issuer is the `issuer` value of the IdP's discovery document, e.g. \
                 \"https://idp.example.com/realms/main\""
        )
    })
}

/// `scheme://host[:port]` with no path: https, or http on a loopback host.
fn base_url(text: &str, allow_path: bool) -> Result<String, String> {
    let uri = Uri::from_str(text).map_err(|e| format!("`{text}` is not a URL ({e})"))?;
    let host = uri.host().ok_or_else(|| format!("`{text}` has no host"))?;
    match uri.scheme_str() {
        Some("https") => {}
        Some("http") if is_loopback_host(host) => {}
        Some("http") => {
            return Err(format!(
                "`{text}` must use https (http is allowed on loopback only)"
            ))
        }
        _ => return Err(format!("`{text}` must start with https://")),
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) || uri.query().is_some() {
        return Err(format!(
            "`{text}` must not carry user information or a query"
        ));
    }
    if !allow_path && !matches!(uri.path(), "" | "/") {
        return Err(format!("`{text}` must not have a path"));
    }
    Ok(text.trim_end_matches('/').to_string())
}

fn login(
    l: &LoginSection,
    connections: &std::collections::HashSet<&str>,
    p: &mut Problems,
) -> Option<Login> {
    let before = p.0.len();
    let external_url = l
        .external_url
        .as_deref()
        .and_then(|u| p.check("login.external_url", base_url(u, false)));
    if let Some(id) = &l.default_connection {
        if !connections.contains(id.as_str()) {
            p.add(
                "login.default_connection",
                format!("no connection has id `{id}`"),
            );
        }
    }
    let domains: Vec<String> = l
        .allowed_redirect_domains
        .iter()
        .enumerate()
        .filter_map(|(i, d)| {
            let name = d.strip_prefix('.').unwrap_or(d);
            let checked = host_match(name).and_then(|m| match m {
                HostMatch::Exact(_) => Ok(d.to_ascii_lowercase()),
                HostMatch::Suffix(_) => Err(format!(
                    "`{d}`: write `.example.com` for subdomains, not `*.`"
                )),
            });
            p.check(format!("login.allowed_redirect_domains[{i}]"), checked)
        })
        .collect();
    if p.0.len() > before {
        return None;
    }
    Some(Login {
        external_url,
        default_connection: l.default_connection.clone(),
        allowed_redirect_domains: domains,
    })
}

fn connection(i: usize, c: &ConnectionSection, p: &mut Problems) -> Option<Connection> {
    let at = |key: &str| format!("connections[{i}].{key}");
    let before = p.0.len();
    if c.id.is_empty()
        || !c
            .id
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || "-_".contains(ch))
    {
        p.add(
            at("id"),
            format!("`{}` may hold only letters, digits, `-` and `_`", c.id),
        );
    }
    let issuer = p.check(at("issuer"), issuer_url(&c.issuer));
    if c.client_id.is_empty() {
        p.add(at("client_id"), "must not be empty");
    }
    let client_secret = secret(
        p,
        &at("client_secret"),
        &c.client_secret,
        &c.client_secret_file,
        &c.client_secret_env,
    );
    if !c.scopes.iter().any(|s| s == "openid") {
        p.add(at("scopes"), "must include `openid`");
    }
    for reserved in [
        "client_id",
        "redirect_uri",
        "response_type",
        "scope",
        "state",
        "nonce",
        "code_challenge",
        "code_challenge_method",
    ] {
        if c.extra_auth_params.contains_key(reserved) {
            p.add(
                at("extra_auth_params"),
                format!("`{reserved}` is set by Gatehouse and cannot be overridden"),
            );
        }
    }
    let attribute_sync = match c.attribute_sync.as_str() {
        "override" => Some(AttributeSync::Override),
        "preserve_local" => Some(AttributeSync::PreserveLocal),
        "none" => Some(AttributeSync::None),
        other => {
            p.add(
                at("attribute_sync"),
                format!("`{other}` is not one of override, preserve_local, none"),
            );
            None
        }
    };
    if !c.jit && (c.link_by_email || c.attribute_sync != "override") {
        p.add(
            at("jit"),
            "link_by_email and attribute_sync need jit = true (nothing is stored without JIT)",
        );
    }
    for (j, claim) in c.claims.attributes.iter().enumerate() {
        if claim.is_empty() || claim == "sub" {
            p.add(
                at(&format!("claims.attributes[{j}]")),
                format!("`{claim}` cannot be an attribute"),
            );
        }
    }
    let mfa = c
        .mfa
        .as_deref()
        .and_then(|m| p.check(at("mfa"), mfa_level(m)));
    let ca_file = c.ca_file.as_ref().map(PathBuf::from);
    if let Some(ca) = &ca_file {
        if !ca.is_file() {
            p.add(
                at("ca_file"),
                format!("`{}` is not a readable file", ca.display()),
            );
        }
    }
    if c.allow_bearer && c.bearer_audiences.iter().all(|a| a.trim().is_empty()) {
        p.add(
            at("bearer_audiences"),
            "must name the audience(s) of the API's access tokens when allow_bearer = true \
             (e.g. [\"urn:example:api\"]); the client id is not a safe default, ID tokens carry it",
        );
    }
    if p.0.len() > before {
        return None;
    }
    Some(Connection {
        id: c.id.clone(),
        display_name: c.display_name.clone().unwrap_or_else(|| c.id.clone()),
        issuer: issuer?,
        client_id: c.client_id.clone(),
        client_secret: Secret(client_secret?),
        scopes: c.scopes.clone(),
        extra_auth_params: c
            .extra_auth_params
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        claims: ClaimNames {
            username: c.claims.username.clone(),
            email: c.claims.email.clone(),
            groups: c.claims.groups.clone(),
            name: c.claims.name.clone(),
            attributes: c.claims.attributes.clone(),
        },
        jit: c.jit,
        attribute_sync: attribute_sync?,
        link_by_email: c.link_by_email,
        trust_email: c.trust_email,
        mfa,
        allow_bearer: c.allow_bearer,
        bearer_audiences: c.bearer_audiences.clone(),
        require_at_jwt: c.require_at_jwt,
        bearer_mfa_acr: c.bearer_mfa_acr.clone(),
        fetch_userinfo: c.fetch_userinfo,
        ca_file,
    })
}

fn identity(i: &IdentitySection, login: &LoginSection, p: &mut Problems) -> Option<IdentityHeader> {
    let alg = p.check(
        "identity.signing_alg",
        i.signing_alg
            .parse::<SigningAlg>()
            .map_err(|e| e.to_string()),
    );
    let ttl = p.check("identity.assertion_ttl", parse_duration(&i.assertion_ttl));
    if ttl.is_some_and(|t| t.as_secs() < 10) {
        p.add("identity.assertion_ttl", "must be at least 10s");
    }
    let key_file = i.signing_key_file.as_ref().map(PathBuf::from);
    if let Some(file) = &key_file {
        if !file.is_file() {
            p.add(
                "identity.signing_key_file",
                format!("`{}` is not a readable file", file.display()),
            );
        }
    }
    if !i.signed_header {
        return Some(IdentityHeader { signing: None });
    }
    let issuer = i
        .issuer
        .clone()
        .or_else(|| login.external_url.clone())
        .unwrap_or_else(|| "gatehouse".to_string());
    Some(IdentityHeader {
        signing: Some(Signing {
            alg: alg?,
            key_file,
            ttl: ttl?,
            issuer: issuer.trim_end_matches('/').to_string(),
        }),
    })
}

/// The in-memory bounds must leave room for real use and stay far below what would exhaust
/// memory (each entry is a few hundred bytes).
const MAP_BOUNDS: std::ops::RangeInclusive<usize> = 100..=10_000_000;

fn limits(l: &LimitsSection, p: &mut Problems) -> Limits {
    for (key, value) in [
        ("limits.used_states", l.used_states),
        ("limits.pending_mfa", l.pending_mfa),
    ] {
        if !MAP_BOUNDS.contains(&value) {
            p.add(
                key,
                format!(
                    "must be between {} and {} (got {value})",
                    MAP_BOUNDS.start(),
                    MAP_BOUNDS.end()
                ),
            );
        }
    }
    Limits {
        login_per_minute: std::num::NonZeroU32::new(l.login_per_minute),
        mfa_per_minute: std::num::NonZeroU32::new(l.mfa_per_minute),
        backchannel_per_minute: std::num::NonZeroU32::new(l.backchannel_per_minute),
        used_states: l.used_states,
        pending_mfa: l.pending_mfa,
    }
}

fn admin(a: &AdminSection, p: &mut Problems) -> Admin {
    if a.token.is_none() && a.token_file.is_none() && a.token_env.is_none() {
        return Admin { token: None };
    }
    let token = secret(p, "admin.token", &a.token, &a.token_file, &a.token_env);
    if token.as_ref().is_some_and(|t| t.len() < 16) {
        p.add("admin.token", "must be at least 16 characters");
    }
    Admin {
        token: token.map(Secret),
    }
}

/// `[store] pool_size` bounds: one connection at least, and no more than a server allows.
const POOL_SIZE: std::ops::RangeInclusive<u32> = 1..=1000;

/// `[store]`: the backend and, for PostgreSQL, its URL (shape only: nothing connects here) and
/// pool settings. `data_dir` is checked for both backends: it also holds generated key files.
fn store(s: &StoreSection, p: &mut Problems) -> Option<StoreBackend> {
    let before = p.0.len();
    if s.data_dir.is_empty() {
        p.add("store.data_dir", "must not be empty");
    }
    if !POOL_SIZE.contains(&s.pool_size) {
        p.add(
            "store.pool_size",
            format!(
                "must be between {} and {} (got {})",
                POOL_SIZE.start(),
                POOL_SIZE.end(),
                s.pool_size
            ),
        );
    }
    let offline_grace = p.check("store.offline_grace", parse_duration(&s.offline_grace));
    let url_keys = [
        ("store.url", &s.url),
        ("store.url_file", &s.url_file),
        ("store.url_env", &s.url_env),
    ];
    let backend = match s.backend.as_str() {
        "redb" => {
            for (key, value) in url_keys {
                if value.is_some() {
                    p.add(
                        key,
                        "is set but store.backend is \"redb\": set backend = \"postgres\" to \
                         use PostgreSQL, or remove it",
                    );
                }
            }
            Some(StoreBackend::Redb)
        }
        "postgres" => {
            let url = secret(p, "store.url", &s.url, &s.url_file, &s.url_env);
            if let Some(url) = &url {
                for problem in super::postgres_url::problems(url) {
                    p.add("store.url", problem);
                }
            }
            url.map(|url| PostgresStore {
                url: Secret(url),
                pool_size: s.pool_size,
                offline_grace: offline_grace.unwrap_or_default(),
                auto_migrate: s.auto_migrate,
            })
            .map(StoreBackend::Postgres)
        }
        other => {
            p.add(
                "store.backend",
                format!("`{other}` is not a store backend (redb or postgres)"),
            );
            None
        }
    };
    if p.0.len() > before {
        return None;
    }
    backend
}

#[cfg(test)]
mod store_tests {
    use super::*;

    const BASE: &str = "[server]\ndeny_all = true\n[[upstreams]]\nurl = \"http://127.0.0.1:1\"\n";

    fn with_store(store: &str) -> Result<Config, Vec<ConfigError>> {
        crate::config::parse(&format!("{BASE}[store]\n{store}\n")).map_err(|e| e.0)
    }

    fn paths(store: &str) -> Vec<String> {
        with_store(store)
            .expect_err(store)
            .into_iter()
            .map(|e| e.path)
            .collect()
    }

    /// Without a `backend` the store is redb, as before; the PostgreSQL keys keep their
    /// defaults (pool 16, grace 30 s, migrations on) for when backend turns to postgres.
    #[test]
    fn the_default_backend_is_redb() {
        let c = with_store("").unwrap();
        assert!(matches!(c.store_backend, StoreBackend::Redb));
        let c = with_store("backend = \"redb\"\npool_size = 4").unwrap();
        assert!(matches!(c.store_backend, StoreBackend::Redb));
    }

    /// `backend = "postgres"` with a URL gives the PostgreSQL model, defaults and all, and
    /// every key is read when set.
    #[test]
    fn a_postgres_backend_is_read_with_its_defaults_and_its_keys() {
        let c = with_store("backend = \"postgres\"\nurl = \"postgres://gh@db:5432/gh\"").unwrap();
        let StoreBackend::Postgres(pg) = c.store_backend else {
            panic!("not postgres");
        };
        assert_eq!(pg.url.0, "postgres://gh@db:5432/gh");
        assert_eq!(pg.pool_size, 16);
        assert_eq!(pg.offline_grace, std::time::Duration::from_secs(30));
        assert!(pg.auto_migrate);

        let c = with_store(
            "backend = \"postgres\"\nurl = \"postgresql://gh:pw@db/gh\"\npool_size = 1000\n\
             offline_grace = \"2m\"\nauto_migrate = false",
        )
        .unwrap();
        let StoreBackend::Postgres(pg) = c.store_backend else {
            panic!("not postgres");
        };
        assert_eq!(pg.pool_size, 1000);
        assert_eq!(pg.offline_grace, std::time::Duration::from_secs(120));
        assert!(!pg.auto_migrate);
    }

    /// The URL may come from a file (trimmed) or an environment variable, like every secret.
    #[test]
    fn the_url_may_come_from_a_file_or_an_environment_variable() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("url");
        std::fs::write(&file, "postgres://gh@db/from_file\n").unwrap();
        let c = with_store(&format!(
            "backend = \"postgres\"\nurl_file = \"{}\"",
            file.display()
        ))
        .unwrap();
        let StoreBackend::Postgres(pg) = c.store_backend else {
            panic!("not postgres");
        };
        assert_eq!(pg.url.0, "postgres://gh@db/from_file");

        let var = "GATEHOUSE_TEST_STORE_URL_ENV_UNIT";
        std::env::set_var(var, "postgres://gh@db/from_env");
        let c = with_store(&format!("backend = \"postgres\"\nurl_env = \"{var}\"")).unwrap();
        let StoreBackend::Postgres(pg) = c.store_backend else {
            panic!("not postgres");
        };
        assert_eq!(pg.url.0, "postgres://gh@db/from_env");
        assert_eq!(
            paths("backend = \"postgres\"\nurl_env = \"GATEHOUSE_TEST_UNSET_VARIABLE_X\""),
            ["store.url_env"]
        );
        assert_eq!(
            paths("backend = \"postgres\"\nurl_file = \"/nonexistent/gatehouse/url\""),
            ["store.url_file"]
        );
    }

    /// postgres without a URL names `store.url`; a URL (inline, file or env) with redb names
    /// that key and says to set the backend; two URL sources at once are refused.
    #[test]
    fn the_url_and_the_backend_must_agree() {
        let errors = with_store("backend = \"postgres\"").unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].path, "store.url");
        assert!(errors[0].message.contains("missing"), "{errors:?}");
        for (key, value) in [
            ("url", "postgres://gh@db/gh"),
            ("url_file", "/etc/gatehouse/url"),
            ("url_env", "PG_URL"),
        ] {
            let errors = with_store(&format!("{key} = \"{value}\"")).unwrap_err();
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert_eq!(errors[0].path, format!("store.{key}"));
            assert!(
                errors[0].message.contains("set backend = \"postgres\""),
                "{errors:?}"
            );
        }
        assert_eq!(
            paths("backend = \"postgres\"\nurl = \"postgres://a@b/c\"\nurl_env = \"X\""),
            ["store.url"]
        );
    }

    /// Every bad value is reported, each under its own key, in one run.
    #[test]
    fn every_bad_store_value_is_named_by_its_key() {
        assert_eq!(
            paths("backend = \"sqlite\"\npool_size = 0\noffline_grace = \"soon\""),
            ["store.pool_size", "store.offline_grace", "store.backend"]
        );
        assert_eq!(paths("pool_size = 1001"), ["store.pool_size"]);
        assert_eq!(paths("data_dir = \"\""), ["store.data_dir"]);
        let errors =
            with_store("backend = \"postgres\"\nurl = \"postgres://gh:hunter22secret@db:99999\"")
                .unwrap_err();
        let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(messages.len(), 2, "{messages:?}");
        assert!(
            messages.iter().all(|m| m.starts_with("store.url: ")),
            "{messages:?}"
        );
        assert!(messages.iter().any(|m| m.contains("port")), "{messages:?}");
        assert!(
            messages.iter().any(|m| m.contains("no database")),
            "{messages:?}"
        );
        assert!(
            messages.iter().all(|m| !m.contains("hunter22secret")),
            "{messages:?}"
        );
        assert!(
            messages
                .iter()
                .any(|m| m.contains("postgres://gh:***@db:99999")),
            "{messages:?}"
        );
    }

    /// The model's `Debug` (as logged) never shows the URL, which may hold a password.
    #[test]
    fn the_debug_form_of_the_store_hides_the_url() {
        let c = with_store("backend = \"postgres\"\nurl = \"postgres://gh:hunter22secret@db/gh\"")
            .unwrap();
        let debug = format!("{:?}", c.store_backend);
        assert!(!debug.contains("hunter22secret"), "{debug}");
        assert!(debug.contains("pool_size: 16"), "{debug}");
    }
}

#[cfg(test)]
mod client_limit_tests {
    use super::*;

    /// The default connection limit is half of what the open-files limit leaves after the
    /// reserve, never below 16, and never more than the limit could hold.
    #[test]
    fn the_default_connection_limit_follows_the_open_files_limit() {
        assert_eq!(max_connections_for(1024), 480);
        assert_eq!(max_connections_for(256), 96);
        assert_eq!(max_connections_for(0), 16);
        assert_eq!(max_connections_for(64), 16);
        for nofile in [100u64, 1000, 4096, 65_536, 1 << 20] {
            let max = max_connections_for(nofile) as u64;
            assert!(max * 2 + FD_RESERVE <= nofile.max(2 * 16 + FD_RESERVE));
        }
    }

    /// Zero deadlines and a zero stream limit are refused by key path; the defaults hold.
    #[test]
    fn client_deadlines_must_be_positive() {
        let ok = crate::config::parse(
            "[server]\n[[upstreams]]\nid = \"a\"\nurl = \"http://127.0.0.1:1\"\n",
        )
        .unwrap();
        let c = ok.server.clients;
        assert_eq!(c.header_timeout, std::time::Duration::from_secs(10));
        assert_eq!(c.body_timeout, std::time::Duration::from_secs(30));
        assert_eq!(c.idle_timeout, std::time::Duration::from_secs(60));
        assert_eq!(c.write_timeout, std::time::Duration::from_secs(30));
        assert_eq!(c.h2_max_concurrent_streams, 100);
        assert_eq!(c.max_connections_per_ip, None);
        assert!(c.max_connections >= 16);
        for key in [
            "client_header_timeout",
            "client_body_timeout",
            "client_idle_timeout",
            "client_write_timeout",
        ] {
            let text = format!(
                "[server]\n{key} = \"0s\"\n[[upstreams]]\nid = \"a\"\nurl = \"http://127.0.0.1:1\"\n"
            );
            let error = crate::config::parse(&text).expect_err(key).to_string();
            assert!(error.contains(&format!("server.{key}")), "{error}");
        }
    }
}

#[cfg(test)]
mod pages_tests {
    use super::super::model::HexColor;
    use proptest::prelude::*;

    fn problems(pages: &str) -> Vec<String> {
        let text = format!("{pages}\n[[upstreams]]\nurl = \"http://127.0.0.1:8080\"\n");
        match super::super::parse(&text) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(|e| e.path.clone()).collect(),
        }
    }

    /// Good branding values pass, and the override files are read into the model.
    #[test]
    fn good_branding_is_read_with_its_override_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("style.css"), "h1{color:red}").unwrap();
        std::fs::write(dir.path().join("footer.html"), "<p>Footer</p>").unwrap();
        let text = format!(
            "[pages]\ntitle = \"Acme\"\nlogo_url = \"https://cdn.example.com/l.svg\"\n\
             accent_color = \"#ABC\"\ntemplates_dir = \"{}\"\n\
             [[upstreams]]\nurl = \"http://127.0.0.1:8080\"\n",
            dir.path().display()
        );
        let config = super::super::parse(&text).unwrap();
        assert_eq!(config.pages.title.as_deref(), Some("Acme"));
        assert_eq!(
            config.pages.accent_color.map(|c| c.css()).as_deref(),
            Some("#aabbcc")
        );
        assert_eq!(
            config.pages.overrides.style_css.as_deref(),
            Some("h1{color:red}")
        );
        assert_eq!(
            config.pages.overrides.footer_html.as_deref(),
            Some("<p>Footer</p>")
        );
        assert_eq!(config.pages.overrides.header_html, None);
    }

    /// Each bad value is reported under its own key; an unknown file, a file that is not
    /// UTF-8, one too big and a missing directory each too.
    #[test]
    fn bad_branding_is_reported_by_key() {
        assert_eq!(problems("[pages]\ntitle = \"\""), ["pages.title"]);
        for logo in [
            "http://x.example/l.png",
            "javascript:alert(1)",
            "//evil/x",
            "/a b",
            "/\"x",
        ] {
            assert_eq!(
                problems(&format!("[pages]\nlogo_url = {logo:?}")),
                ["pages.logo_url"]
            );
        }
        for colour in ["red", "#12345", "#1234567", "#ggg", "#fff;x", "fff"] {
            assert_eq!(
                problems(&format!("[pages]\naccent_color = {colour:?}")),
                ["pages.accent_color"]
            );
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("index.html"), "x").unwrap();
        std::fs::write(dir.path().join("header.html"), b"\xff").unwrap();
        std::fs::write(
            dir.path().join("footer.html"),
            vec![b'a'; super::super::model::PageOverrides::MAX_FILE as usize + 1],
        )
        .unwrap();
        let found = problems(&format!("[pages]\ntemplates_dir = {:?}", dir.path()));
        assert_eq!(
            found,
            [
                "pages.templates_dir/footer.html",
                "pages.templates_dir/header.html",
                "pages.templates_dir/index.html"
            ]
        );
        let missing = problems("[pages]\ntemplates_dir = \"/nonexistent/gatehouse-pages\"");
        assert_eq!(missing, ["pages.templates_dir"]);
    }

    proptest! {
        /// Whatever string is offered as a colour, an accepted one comes out as exactly
        /// `#` and six lower-case hex digits: nothing else can reach the page's CSS.
        #[test]
        fn an_accepted_colour_is_always_plain_hex(text in ".{0,10}|#[0-9a-fA-F]{3,6}") {
            if let Some(c) = HexColor::parse(&text) {
                let css = c.css();
                prop_assert_eq!(css.len(), 7);
                prop_assert!(css[1..].bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
            }
        }

        /// Contrast is symmetric and between 1 and 21.
        #[test]
        fn contrast_is_symmetric_and_bounded(a in any::<[u8; 3]>(), b in any::<[u8; 3]>()) {
            let (a, b) = (HexColor(a), HexColor(b));
            let r = a.contrast(&b);
            prop_assert!((r - b.contrast(&a)).abs() < 1e-9);
            prop_assert!((1.0..=21.0 + 1e-9).contains(&r));
        }
    }
}

#[cfg(test)]
mod upstream_address_tests {
    use super::*;

    fn upstream_url(url: &str) -> Result<Config, String> {
        crate::config::parse(&format!(
            "[server]\ndeny_all = true\n[[upstreams]]\nid = \"a\"\nurl = \"{url}\"\n"
        ))
        .map_err(|e| e.to_string())
    }

    /// Checking a config never touches DNS: a host name (even one that can never resolve,
    /// `.invalid`) is kept as a name with its port; an IP literal is an address at once.
    #[test]
    fn an_upstream_host_name_is_kept_as_a_name_not_resolved() {
        let c = upstream_url("http://App.Invalid:8080").unwrap();
        assert_eq!(
            c.upstreams[0].address,
            UpstreamAddress::Name {
                host: "app.invalid".into(),
                port: 8080
            }
        );
        assert_eq!(c.upstreams[0].sni, "App.Invalid");
        let c = upstream_url("https://[::1]").unwrap();
        assert_eq!(
            c.upstreams[0].address,
            UpstreamAddress::Ip("[::1]:443".parse().unwrap())
        );
        let c = upstream_url("http://app.internal").unwrap();
        assert_eq!(
            c.upstreams[0].address,
            UpstreamAddress::Name {
                host: "app.internal".into(),
                port: 80
            }
        );
    }

    /// Only the shape of an upstream URL is checked: a host that is no host name is refused
    /// by key path.
    #[test]
    fn an_upstream_host_of_the_wrong_shape_is_refused() {
        for url in [
            "http://app_%41:80",
            "http://a b",
            "http://:80",
            "http://app:99999",
        ] {
            let error = upstream_url(url).expect_err(url);
            assert!(error.contains("upstreams[0].url"), "{url}: {error}");
        }
    }

    /// `dns_refresh` defaults to 30 s and is at least 1 s.
    #[test]
    fn dns_refresh_defaults_to_30s_and_is_at_least_one_second() {
        let c = upstream_url("http://127.0.0.1:1").unwrap();
        assert_eq!(c.server.dns_refresh, std::time::Duration::from_secs(30));
        for bad in ["500ms", "0s", "soon"] {
            let error = crate::config::parse(&format!(
                "[server]\ndeny_all = true\ndns_refresh = \"{bad}\"\n[[upstreams]]\nurl = \"http://127.0.0.1:1\"\n"
            ))
            .expect_err(bad)
            .to_string();
            assert!(error.contains("server.dns_refresh"), "{bad}: {error}");
        }
        let c = crate::config::parse(
            "[server]\ndeny_all = true\ndns_refresh = \"1s\"\n[[upstreams]]\nurl = \"http://127.0.0.1:1\"\n",
        )
        .unwrap();
        assert_eq!(c.server.dns_refresh, MIN_DNS_REFRESH);
    }
}

#[cfg(test)]
mod issuer_tests {
    /// An issuer is kept to the letter, with or without a trailing `/`: discovery compares
    /// the document's `issuer` with it exactly, and Auth0 names its issuer with the `/`.
    #[test]
    fn an_issuer_is_kept_exactly_as_written() {
        for issuer in [
            "https://tenant.auth0.com/",
            "https://idp.example.com/realms/main",
        ] {
            let text = format!(
                "[[upstreams]]\nurl = \"http://127.0.0.1:8080\"\n[[connections]]\nid = \"c\"\n\
                 issuer = \"{issuer}\"\nclient_id = \"x\"\nclient_secret = \"y\"\n"
            );
            let config = crate::config::parse(&text).unwrap();
            assert_eq!(config.connections[0].issuer, issuer);
        }
    }
}
