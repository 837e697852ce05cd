//! Liveness and readiness. `/live` answers 200 whenever the process serves HTTP at all;
//! `/ready` answers 200 only while Gatehouse is serving and not draining, and, with
//! `[server] ready_requires_idp = true`, only once every identity provider is discovered.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Ready means: serving, not draining, and (only when required) every identity provider
/// discovered. An IdP that is down does not make Gatehouse unready by default: public routes
/// and live sessions still work, and taking the instance out of a load balancer would stop
/// them too.
#[derive(Debug, Default)]
pub struct Readiness {
    serving: AtomicBool,
    draining: AtomicBool,
    idps_pending: AtomicUsize,
    requires_idps: AtomicBool,
    /// A shared store (PostgreSQL) that does not answer: this replica cannot serve sessions
    /// for long, so a load balancer should prefer the others.
    store_down: AtomicBool,
}

impl Readiness {
    /// Whether the shared store answers (`/ready` is 503 while it does not).
    pub fn set_store_down(&self, down: bool) {
        self.store_down.store(down, Ordering::Release);
    }

    pub fn set_serving(&self) {
        self.serving.store(true, Ordering::Release);
    }

    /// Shutdown has begun: load balancers should stop sending traffic.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Whether readiness waits for every identity provider (`[server] ready_requires_idp`).
    pub fn require_idps(&self, required: bool) {
        self.requires_idps.store(required, Ordering::Release);
    }

    /// How many identity providers are still to be discovered.
    pub fn expect_idps(&self, count: usize) {
        self.idps_pending.store(count, Ordering::Release);
    }

    /// A config reload added identity providers still to be discovered.
    pub fn expect_more_idps(&self, count: usize) {
        self.idps_pending.fetch_add(count, Ordering::AcqRel);
    }

    /// One more identity provider has its metadata and keys (or was removed undiscovered).
    pub fn idp_discovered(&self) {
        let _ = self
            .idps_pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    pub fn is_ready(&self) -> bool {
        if self.store_down.load(Ordering::Acquire) {
            return false;
        }
        self.serving.load(Ordering::Acquire)
            && !self.draining.load(Ordering::Acquire)
            && (!self.requires_idps.load(Ordering::Acquire)
                || self.idps_pending.load(Ordering::Acquire) == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serving_with_one_idp_pending(required: bool) -> Readiness {
        let r = Readiness::default();
        r.require_idps(required);
        r.expect_idps(1);
        r.set_serving();
        r
    }

    #[test]
    fn an_undiscovered_idp_does_not_make_gatehouse_unready_by_default() {
        assert!(serving_with_one_idp_pending(false).is_ready());
    }

    #[test]
    fn an_undiscovered_idp_makes_gatehouse_unready_when_required() {
        let r = serving_with_one_idp_pending(true);
        assert!(!r.is_ready());
        r.idp_discovered();
        assert!(r.is_ready());
    }

    #[test]
    fn draining_or_not_yet_serving_is_never_ready() {
        let r = Readiness::default();
        assert!(!r.is_ready(), "not serving yet");
        r.set_serving();
        assert!(r.is_ready());
        r.set_draining();
        assert!(!r.is_ready(), "draining");
    }
}
