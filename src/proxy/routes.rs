//! Route classification: what kind of request this is (an endpoint of Gatehouse's own, a
//! public route, or a protected one) and which upstream serves it. Everything here matches
//! the normalized path only, never the query.
//!
//! A path with parameters (`/admin;x/users`) has two forms, the one forwarded and the one
//! Tomcat-like backends serve ([`NormalPath::match_form`]). The decisions are taken so that
//! either reading is covered: a request is public only when both forms are, and an `[[access]]`
//! rule applies when it matches either ([`PathRule::applies`]).

use http::Method;

use crate::config::model::{HostMatch, PathRule, Upstream};
use crate::metrics::RouteKind;
use crate::uri::path::{under_prefix, NormalPath};

/// The reserved prefix for the login endpoints (start, callback, sign_out, auth, userinfo).
pub use crate::web::paths::AUTH_PREFIX;
pub const PING_PATH: &str = "/ping";
pub const READY_PATH: &str = "/ready";

/// What a request is, for the pipeline and as the `kind` metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `/ping`: liveness, answered by Gatehouse.
    Ping,
    /// `/ready`: readiness, answered by Gatehouse.
    Ready,
    /// `/oauth2/*`: the login endpoints.
    Auth,
    /// `/.well-known/gatehouse/jwks.json`: the keys of the signed identity header.
    Jwks,
    /// Matched a `[[public]]` rule: proxied without authentication.
    Public,
    /// Everything else: needs a session or a bearer token.
    Protected,
}

impl Route {
    /// The bounded `kind` label of the request metrics.
    pub fn kind(self) -> RouteKind {
        match self {
            Route::Ping | Route::Ready | Route::Jwks => RouteKind::Internal,
            Route::Auth => RouteKind::Auth,
            Route::Public => RouteKind::Public,
            Route::Protected => RouteKind::Protected,
        }
    }
}

/// Classifies requests and picks upstreams; built once from config.
#[derive(Debug, Clone)]
pub struct Router {
    public: Vec<PathRule>,
    /// Upstreams, most specific first, so the first match wins.
    upstreams: Vec<Upstream>,
}

fn specificity(u: &Upstream) -> (u8, usize, usize) {
    let host = match &u.host {
        Some(HostMatch::Exact(_)) => (2, 0),
        Some(HostMatch::Suffix(s)) => (1, s.len()),
        None => (0, 0),
    };
    (host.0, host.1, u.path_prefix.len())
}

fn host_matches(rule: &Option<HostMatch>, host: Option<&str>) -> bool {
    match (rule, host) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(HostMatch::Exact(want)), Some(h)) => h.eq_ignore_ascii_case(want),
        (Some(HostMatch::Suffix(suffix)), Some(h)) => {
            h.len() > suffix.len() && h[h.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
        }
    }
}

/// The host name of a `Host` value: no port, no trailing dot.
pub fn host_name(host: &str) -> &str {
    let host = if host.starts_with('[') {
        host.split_inclusive(']').next().unwrap_or(host)
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    host.strip_suffix('.').unwrap_or(host)
}

impl Router {
    pub fn new(public: Vec<PathRule>, mut upstreams: Vec<Upstream>) -> Self {
        upstreams.sort_by_key(|u| std::cmp::Reverse(specificity(u)));
        Self { public, upstreams }
    }

    /// What the request is. Reserved paths and upstreams match the match form; the request is
    /// public only when a `[[public]]` rule covers the match form and one covers the forwarded
    /// form too, so a path parameter never turns a protected path public.
    pub fn classify(&self, method: &Method, normal: &NormalPath) -> Route {
        let path = normal.match_form();
        match path {
            PING_PATH => return Route::Ping,
            READY_PATH => return Route::Ready,
            crate::identity::signed_header::JWKS_PATH => return Route::Jwks,
            _ => {}
        }
        if under_prefix(path, AUTH_PREFIX, true) {
            return Route::Auth;
        }
        let public = |p: &str| self.public.iter().any(|rule| rule.matches(method, p));
        if public(path) && (!normal.has_parameters() || public(normal.as_str())) {
            Route::Public
        } else {
            Route::Protected
        }
    }

    /// The upstreams, in the order [`Self::upstream_index`] numbers them.
    pub fn upstreams(&self) -> &[Upstream] {
        &self.upstreams
    }

    /// The index of the upstream for this host and path, if any.
    pub fn upstream_index(&self, host: Option<&str>, path: &NormalPath) -> Option<usize> {
        let host = host.map(host_name);
        self.upstreams.iter().position(|u| {
            host_matches(&u.host, host) && under_prefix(path.match_form(), &u.path_prefix, true)
        })
    }

    /// The upstream for this host and path, if any.
    pub fn upstream(&self, host: Option<&str>, path: &NormalPath) -> Option<&Upstream> {
        self.upstream_index(host, path).map(|i| &self.upstreams[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uri::path::normalize;

    fn router(config: &str) -> Router {
        let c = crate::config::parse(config).expect("valid config");
        Router::new(c.public, c.upstreams)
    }

    fn route(r: &Router, method: &str, raw: &str) -> Route {
        let path = normalize(raw).expect("normal path");
        r.classify(&Method::from_bytes(method.as_bytes()).unwrap(), &path)
    }

    const RULES: &str = r#"
        [[upstreams]]
        url = "http://127.0.0.1:1"
        [[public]]
        path = "/public"
        match = "prefix"
        methods = ["GET"]
        [[public]]
        path = "/Assets"
        match = "prefix"
        case_sensitive = false
        [[public]]
        path = "/health"
        [[public]]
        path = "/static/[a-z]+\\.css"
        match = "regex"
    "#;

    #[test]
    fn public_prefix_rules_cover_their_subtree_only() {
        let r = router(RULES);
        assert_eq!(route(&r, "GET", "/public"), Route::Public);
        assert_eq!(route(&r, "GET", "/public/x"), Route::Public);
        assert_eq!(route(&r, "GET", "/publicity"), Route::Protected);
        assert_eq!(route(&r, "GET", "/PUBLIC"), Route::Protected);
        assert_eq!(route(&r, "GET", "/assets/A.js"), Route::Public);
        assert_eq!(route(&r, "GET", "/ASSETS/a.js"), Route::Public);
    }

    #[test]
    fn methods_must_match_exactly() {
        let r = router(RULES);
        assert_eq!(route(&r, "POST", "/public"), Route::Protected);
        assert_eq!(route(&r, "get", "/public"), Route::Protected);
        assert_eq!(route(&r, "POST", "/health"), Route::Public);
    }

    #[test]
    fn exact_and_regex_rules_match_the_whole_path() {
        let r = router(RULES);
        assert_eq!(route(&r, "GET", "/health/"), Route::Protected);
        assert_eq!(route(&r, "GET", "/static/site.css"), Route::Public);
        assert_eq!(
            route(&r, "GET", "/static/site.css/../../admin"),
            Route::Protected
        );
        assert_eq!(route(&r, "GET", "/x/static/site.css"), Route::Protected);
    }

    /// Path parameters can neither open a protected path nor widen a public rule: the request
    /// is public only when both readings are.
    #[test]
    fn path_parameters_never_make_a_path_public() {
        let r = router(RULES);
        assert_eq!(route(&r, "GET", "/public/x;jsessionid=1"), Route::Public);
        assert_eq!(route(&r, "GET", "/public;x/y"), Route::Protected);
        assert_eq!(route(&r, "GET", "/health;x"), Route::Protected);
        assert_eq!(route(&r, "GET", "/static/site.css;v=2"), Route::Protected);
        assert_eq!(route(&r, "GET", "/ping;x"), Route::Ping);
        assert_eq!(route(&r, "GET", "/oauth2;x/start"), Route::Auth);
    }

    /// An upstream's path prefix is matched on the match form, so `/api;x/v1` is served by the
    /// `/api` upstream (and its rules), as a Tomcat-like backend would read it.
    #[test]
    fn upstreams_are_picked_on_the_match_form() {
        let r = router(
            "[[upstreams]]\nid = \"root\"\nurl = \"http://127.0.0.1:1\"\n[[upstreams]]\nid = \"api\"\npath_prefix = \"/api\"\nurl = \"http://127.0.0.1:2\"\n",
        );
        let pick = |path: &str| {
            r.upstream(None, &normalize(path).unwrap())
                .map(|u| u.id.clone())
        };
        assert_eq!(pick("/api;x/v1").as_deref(), Some("api"));
        assert_eq!(pick("/api/v1").as_deref(), Some("api"));
    }

    #[test]
    fn reserved_paths_win_over_rules() {
        let r = router(RULES);
        assert_eq!(route(&r, "GET", "/ping"), Route::Ping);
        assert_eq!(route(&r, "GET", "/ready"), Route::Ready);
        assert_eq!(route(&r, "GET", "/oauth2/start"), Route::Auth);
        assert_eq!(route(&r, "GET", "/oauth2"), Route::Auth);
        assert_eq!(route(&r, "GET", "/oauth2x"), Route::Protected);
        assert_eq!(
            route(&r, "GET", "/.well-known/gatehouse/jwks.json"),
            Route::Jwks
        );
    }

    #[test]
    fn the_most_specific_upstream_wins() {
        let r = router(
            r#"
            [[upstreams]]
            id = "root"
            url = "http://127.0.0.1:1"
            [[upstreams]]
            id = "api"
            path_prefix = "/api"
            url = "http://127.0.0.1:2"
            [[upstreams]]
            id = "wild"
            host = "*.example.com"
            url = "http://127.0.0.1:3"
            [[upstreams]]
            id = "exact"
            host = "app.example.com"
            path_prefix = "/api"
            url = "http://127.0.0.1:4"
        "#,
        );
        let pick = |host: Option<&str>, path: &str| {
            r.upstream(host, &normalize(path).unwrap())
                .map(|u| u.id.clone())
        };
        assert_eq!(pick(None, "/x").as_deref(), Some("root"));
        assert_eq!(pick(None, "/api/v1").as_deref(), Some("api"));
        assert_eq!(pick(None, "/apiary").as_deref(), Some("root"));
        assert_eq!(
            pick(Some("x.example.com:8080"), "/api").as_deref(),
            Some("wild")
        );
        assert_eq!(
            pick(Some("APP.example.com"), "/api").as_deref(),
            Some("exact")
        );
        assert_eq!(pick(Some("app.example.com"), "/").as_deref(), Some("wild"));
        assert_eq!(pick(Some("example.com"), "/").as_deref(), Some("root"));
    }

    #[test]
    fn no_upstream_matches_when_none_covers_the_request() {
        let r = router("[[upstreams]]\nhost = \"a.example\"\nurl = \"http://127.0.0.1:1\"\n");
        assert!(r
            .upstream(Some("b.example"), &normalize("/").unwrap())
            .is_none());
        assert!(r.upstream(None, &normalize("/").unwrap()).is_none());
    }
}
