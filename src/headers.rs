//! Header names Gatehouse uses, in one place, and [`HeaderEdit`]: the way the pipeline edits
//! request headers. pingora's `RequestHeader` keeps a second map of the original name cases
//! beside the `HeaderMap`, so every edit must go through its methods; the trait lets the same
//! code run on a plain `HeaderMap` in unit tests.

use http::{HeaderMap, HeaderName, HeaderValue};
use pingora::http::RequestHeader;

/// Names as written on the wire when Gatehouse sets them.
pub mod wire {
    pub const X_FORWARDED_FOR: &str = "X-Forwarded-For";
    pub const X_FORWARDED_PROTO: &str = "X-Forwarded-Proto";
    pub const X_FORWARDED_HOST: &str = "X-Forwarded-Host";
    pub const X_REAL_IP: &str = "X-Real-IP";
    pub const X_REQUEST_ID: &str = "X-Request-Id";
    /// The signed identity assertion (see `identity::signed_header`).
    pub const X_GATEHOUSE_IDENTITY: &str = "X-Gatehouse-Identity";
}

/// The connection the user signed in through (not configurable, like every `X-Gatehouse-*`).
pub const X_GATEHOUSE_CONNECTION: HeaderName = HeaderName::from_static("x-gatehouse-connection");

/// The forwarding headers Gatehouse sets (trusted only from `trusted_proxies`).
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
/// The request id Gatehouse keeps (when sane) or makes, and passes on.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Edits on a set of request headers.
pub trait HeaderEdit {
    fn map(&self) -> &HeaderMap;
    /// Removes every value of `name`.
    fn remove(&mut self, name: &HeaderName);
    /// Replaces every value of `name` with `value`. `name` is written as given on the wire
    /// (Title-Case), and a static name costs pingora no copy of it.
    fn insert(&mut self, name: &'static str, value: HeaderValue);
}

impl HeaderEdit for HeaderMap {
    fn map(&self) -> &HeaderMap {
        self
    }
    fn remove(&mut self, name: &HeaderName) {
        HeaderMap::remove(self, name);
    }
    fn insert(&mut self, name: &'static str, value: HeaderValue) {
        if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
            HeaderMap::insert(self, name, value);
        }
    }
}

impl HeaderEdit for RequestHeader {
    fn map(&self) -> &HeaderMap {
        &self.headers
    }
    fn remove(&mut self, name: &HeaderName) {
        self.remove_header(name);
    }
    fn insert(&mut self, name: &'static str, value: HeaderValue) {
        // Only fails for an invalid name; ours are constants.
        let _ = self.insert_header(name, value);
    }
}
