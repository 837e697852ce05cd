//! Header names Gatehouse uses, in one place, and [`HeaderEdit`]: the way the pipeline edits
//! request headers. pingora's `RequestHeader` keeps a second map of the original name cases
//! beside the `HeaderMap`, so every edit must go through its methods; the trait lets the same
//! code run on a plain `HeaderMap` in unit tests.

use http::{HeaderMap, HeaderName, HeaderValue};
use pingora::http::RequestHeader;

pub use crate::proxy::forwarded::{
    X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO, X_REAL_IP,
};
pub use crate::proxy::request_id::X_REQUEST_ID;

/// Edits on a set of request headers.
pub trait HeaderEdit {
    fn map(&self) -> &HeaderMap;
    /// Removes every value of `name`.
    fn remove(&mut self, name: &HeaderName);
    /// Replaces every value of `name` with `value`.
    fn insert(&mut self, name: HeaderName, value: HeaderValue);
}

impl HeaderEdit for HeaderMap {
    fn map(&self) -> &HeaderMap {
        self
    }
    fn remove(&mut self, name: &HeaderName) {
        HeaderMap::remove(self, name);
    }
    fn insert(&mut self, name: HeaderName, value: HeaderValue) {
        HeaderMap::insert(self, name, value);
    }
}

impl HeaderEdit for RequestHeader {
    fn map(&self) -> &HeaderMap {
        &self.headers
    }
    fn remove(&mut self, name: &HeaderName) {
        self.remove_header(name);
    }
    fn insert(&mut self, name: HeaderName, value: HeaderValue) {
        // Only fails for values that are not valid header values; ours always are.
        let _ = self.insert_header(name, value);
    }
}
