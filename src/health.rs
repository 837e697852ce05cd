//! Readiness: `/ready` answers 200 only while Gatehouse is serving and not draining.

use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug, Default)]
pub struct Readiness {
    serving: AtomicBool,
    draining: AtomicBool,
}

impl Readiness {
    pub fn set_serving(&self) {
        self.serving.store(true, Ordering::Release);
    }

    /// Shutdown has begun: load balancers should stop sending traffic.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.serving.load(Ordering::Acquire) && !self.draining.load(Ordering::Acquire)
    }
}
