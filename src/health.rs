//! Readiness: `/ready` answers 200 only while Gatehouse is serving and not draining.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Ready means: serving, not draining, and every identity provider discovered.
#[derive(Debug, Default)]
pub struct Readiness {
    serving: AtomicBool,
    draining: AtomicBool,
    idps_pending: AtomicUsize,
}

impl Readiness {
    pub fn set_serving(&self) {
        self.serving.store(true, Ordering::Release);
    }

    /// Shutdown has begun: load balancers should stop sending traffic.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// How many identity providers must be discovered before Gatehouse is ready.
    pub fn expect_idps(&self, count: usize) {
        self.idps_pending.store(count, Ordering::Release);
    }

    /// One more identity provider has its metadata and keys.
    pub fn idp_discovered(&self) {
        let _ = self
            .idps_pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    pub fn is_ready(&self) -> bool {
        self.serving.load(Ordering::Acquire)
            && !self.draining.load(Ordering::Acquire)
            && self.idps_pending.load(Ordering::Acquire) == 0
    }
}
