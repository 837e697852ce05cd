//! Per-client rate limits on the endpoints anyone can call before signing in: the login
//! (`/oauth2/start` and `/oauth2/callback` share one budget), the second-factor form and the
//! back-channel logout. The client is the address the forwarding step settled on (a trusted
//! proxy's `X-Forwarded-For`, else the peer); IPv6 clients count per /64, since one host
//! usually holds a whole /64. Refused calls get 429 with `Retry-After`.
//!
//! The limiters keep a cell per recently seen client; [`Throttle::forget_idle`] (run by the
//! sweeper) drops the cells of clients whose budget is full again, so the memory follows the
//! clients of the last minute, not every client ever seen.

use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::model::Limits;

/// Which budget a call draws on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Login,
    Mfa,
    Backchannel,
}

impl Endpoint {
    pub fn label(self) -> crate::metrics::RateLimited {
        use crate::metrics::RateLimited;
        match self {
            Endpoint::Login => RateLimited::Login,
            Endpoint::Mfa => RateLimited::Mfa,
            Endpoint::Backchannel => RateLimited::Backchannel,
        }
    }
}

type Limiter = DefaultKeyedRateLimiter<IpAddr>;

pub struct Throttle {
    login: Option<Limiter>,
    mfa: Option<Limiter>,
    backchannel: Option<Limiter>,
    clock: DefaultClock,
}

impl std::fmt::Debug for Throttle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttle").finish_non_exhaustive()
    }
}

fn limiter(per_minute: Option<NonZeroU32>) -> Option<Limiter> {
    per_minute.map(|n| RateLimiter::keyed(Quota::per_minute(n)))
}

/// The key a client counts under: its address, or its /64 for IPv6.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mask = !0u128 << 64;
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
            }
        },
    }
}

impl Throttle {
    pub fn new(limits: &Limits) -> Self {
        Self {
            login: limiter(limits.login_per_minute),
            mfa: limiter(limits.mfa_per_minute),
            backchannel: limiter(limits.backchannel_per_minute),
            clock: DefaultClock::default(),
        }
    }

    /// `Err(wait)` when this client has used up its budget for `endpoint`; a call without a
    /// known client address is not limited.
    pub fn check(&self, endpoint: Endpoint, client: Option<IpAddr>) -> Result<(), Duration> {
        let limiter = match endpoint {
            Endpoint::Login => &self.login,
            Endpoint::Mfa => &self.mfa,
            Endpoint::Backchannel => &self.backchannel,
        };
        let (Some(limiter), Some(ip)) = (limiter, client) else {
            return Ok(());
        };
        limiter
            .check_key(&client_key(ip))
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Drops the cells of clients whose budget has refilled; returns how many clients are
    /// still tracked.
    pub fn forget_idle(&self) -> usize {
        [&self.login, &self.mfa, &self.backchannel]
            .into_iter()
            .flatten()
            .map(|l| {
                l.retain_recent();
                l.shrink_to_fit();
                l.len()
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle(login: u32) -> Throttle {
        Throttle::new(&Limits {
            login_per_minute: NonZeroU32::new(login),
            ..Limits::default()
        })
    }

    #[test]
    fn a_client_past_its_budget_is_refused_with_a_wait_and_others_are_not() {
        let t = throttle(3);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            assert!(t.check(Endpoint::Login, Some(a)).is_ok());
        }
        let wait = t.check(Endpoint::Login, Some(a)).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        assert!(t.check(Endpoint::Login, Some(b)).is_ok());
        assert!(
            t.check(Endpoint::Mfa, Some(a)).is_ok(),
            "budgets are separate"
        );
    }

    #[test]
    fn every_address_of_one_ipv6_64_shares_a_budget() {
        let t = throttle(2);
        for last in ["2001:db8::1", "2001:db8::2:3", "2001:db8::ffff"] {
            let _ = t.check(Endpoint::Login, Some(last.parse().unwrap()));
        }
        assert!(t
            .check(Endpoint::Login, Some("2001:db8::9".parse().unwrap()))
            .is_err());
        assert!(t
            .check(Endpoint::Login, Some("2001:db8:0:1::9".parse().unwrap()))
            .is_ok());
    }

    #[test]
    fn an_ipv4_mapped_address_counts_as_its_ipv4_address() {
        let t = throttle(1);
        assert!(t
            .check(Endpoint::Login, Some("192.0.2.7".parse().unwrap()))
            .is_ok());
        assert!(t
            .check(Endpoint::Login, Some("::ffff:192.0.2.7".parse().unwrap()))
            .is_err());
    }

    #[test]
    fn a_rate_of_zero_turns_the_limit_off() {
        let t = throttle(0);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..1000 {
            assert!(t.check(Endpoint::Login, Some(a)).is_ok());
        }
    }
}
