//! Request ids: an incoming `X-Request-Id` that looks like an id is kept, so traces join up
//! across proxies; otherwise Gatehouse makes one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use http::HeaderValue;

pub use crate::headers::X_REQUEST_ID;

/// Makes process-unique ids: a per-start prefix and a counter.
#[derive(Debug)]
pub struct RequestIds {
    prefix: u32,
    next: AtomicU64,
}

impl Default for RequestIds {
    fn default() -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        Self {
            prefix: nanos ^ std::process::id().rotate_left(16),
            next: AtomicU64::new(1),
        }
    }
}

/// An id we accept from a client: 1 to 64 characters of `[A-Za-z0-9._-]`.
fn is_plausible(value: &HeaderValue) -> bool {
    let b = value.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(c))
}

impl RequestIds {
    /// The id for a request that came with `incoming`.
    pub fn for_request(&self, incoming: Option<&HeaderValue>) -> String {
        match incoming {
            Some(v) if is_plausible(v) => String::from_utf8_lossy(v.as_bytes()).into_owned(),
            _ => {
                let mut id = String::with_capacity(20);
                crate::ids::push_hex(&mut id, u128::from(self.prefix), 8);
                let n = self.next.fetch_add(1, Ordering::Relaxed);
                crate::ids::push_hex(&mut id, u128::from(n), 12);
                id
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sane_incoming_id_is_kept_and_a_strange_one_replaced() {
        let ids = RequestIds::default();
        assert_eq!(
            ids.for_request(Some(&HeaderValue::from_static("abc-123"))),
            "abc-123"
        );
        let made = ids.for_request(Some(&HeaderValue::from_static("a b<script>")));
        assert_eq!(made.len(), 20);
        assert_ne!(ids.for_request(None), ids.for_request(None));
    }

    #[test]
    fn a_made_id_is_the_prefix_and_the_count_in_hex() {
        let ids = RequestIds {
            prefix: 0xab,
            next: AtomicU64::new(0x1_0000_0000_0000),
        };
        assert_eq!(ids.for_request(None), "000000ab1000000000000");
        assert_eq!(ids.for_request(None), "000000ab1000000000001");
    }
}
