//! Gatehouse: an authentication sidecar in front of web apps that have no login of their own.
//!
//! # Request flow
//!
//! ```text
//! client ──> proxy listener (pingora; HTTP/1.1, h2c, TLS+h2)
//!              │ proxy::Gatehouse::request_filter
//!              ├─ proxy::request_id   keep a sane X-Request-Id or make one
//!              ├─ proxy::path         normalize once (forwarded form + match form without
//!              │                      ;params); refuse %2f, \, NUL, ..;, %252e, %c0%ae, climbs
//!              ├─ proxy::hygiene      strip every incoming identity / X-Gatehouse-* header
//!              ├─ proxy::forwarded    X-Forwarded-*, trusted only from trusted_proxies
//!              ├─ proxy::routes       classify: internal | auth (/oauth2/*) | public | protected
//!              │                      and pick the upstream (host, longest path prefix)
//!              ├─ auth::Auth::authenticate  session cookie (memory only) or bearer JWT;
//!              │                      none: 401 (API) or 302 to /oauth2/start (browser)
//!              │     /oauth2/*: web::endpoints (start, callback -> auth::login: identity::jit
//!              │                or the claims, + session, one store transaction; web::mfa)
//!              ├─ identity::access    access rules (email domain, groups, roles, connections)
//!              ├─ mfa policy          step-up to /oauth2/mfa where a second factor is required
//!              ├─ identity::headers   identity headers (built once per session) and
//!              │  identity::signed_header  X-Gatehouse-Identity (cached per session, upstream)
//!              └─ upstream (pingora connection pool); failures -> 502/504 in fail_to_proxy
//!            logging(): metrics + one access line per request
//! ```
//!
//! # Layout
//!
//! - [`config`]: the file structs (serde, unknown keys rejected), validation that reports every
//!   problem with its key path, the internal model, and the lint for mistakes that would fail
//!   open (`check-config` and `serve`).
//! - [`server`]: binds listeners up front, builds the pingora services, runs and drains.
//! - [`proxy`]: the `ProxyHttp` phases and one module per pipeline step; `proxy::resolve`
//!   resolves upstream host names at start and again in the background (`dns_refresh`).
//! - [`admin`]: the admin listener (`/metrics`, `/ping`, `/ready`).
//! - [`error`]: request errors and their HTTP statuses, in one place.
//! - [`headers`]: header names and the header-editing trait.
//! - [`metrics`], [`health`], [`logging`]: what Gatehouse tells operators.
//! - [`web`]: Gatehouse's own pages and endpoints: `/oauth2/*` (`web::endpoints`), the TOTP
//!   and Email OTP pages (`web::mfa`), early answers (`web::respond`), the one layout of every page
//!   (`web::templates`, maud, branded by `[pages]`), paths and form parsing. Uses config,
//!   store, identity, mfa and auth; used by proxy; never uses proxy, server or admin.
//! - [`auth`]: connections (OIDC), the login flow, sessions, bearer tokens, and which
//!   request a front proxy's forward-auth call is about (`auth::forward`). What a config
//!   reload may change (`auth::Settings`: connections, `[login]`, `[mfa]`) is one snapshot a
//!   request takes with its routing (`auth::AuthView`).
//! - [`identity`]: claims, JIT provisioning, access rules, identity headers, the signed header.
//! - [`mfa`]: local second factors, TOTP and Email OTP (codes hashed beside the pending login,
//!   sent through `[smtp]` by `mfa::email::Mailer`): policy, enrolment and verification,
//!   lockout, recovery codes.
//! - [`store`]: the redb tables (sessions, users, links, indexes, audit) and their accessors.
//! - [`users`]: `gatehouse users ...`, on the store file or through the admin API.
//! - [`clock`]: the one "now" every expiry is read on (tests advance a manual one).
//! - [`private_file`]: secret files are created 0600 and refused when others may read them.
//! - [`bounded`]: the size- and age-bounded map behind every in-memory table kept for clients
//!   that have not signed in.

pub mod admin;
pub mod auth;
pub mod bounded;
pub mod clock;
pub mod config;
pub mod conns;
pub mod error;
pub mod headers;
pub mod health;
pub mod identity;
pub mod ids;
pub mod logging;
pub mod metrics;
pub mod mfa;

pub mod private_file;
pub mod proxy;
pub mod reload;
pub mod seal;
pub mod server;
pub mod store;
pub mod text;
pub mod uri;
pub mod users;
pub mod web;
