//! `X-Forwarded-For`, `-Proto`, `-Host` and `X-Real-IP`. Incoming values are believed only
//! when the direct peer is one of `headers.trusted_proxies`; from anyone else they are
//! replaced by what Gatehouse saw itself.

use std::net::IpAddr;

use bytes::Bytes;
use http::header::{FORWARDED, HOST};
use http::HeaderValue;

use crate::headers::{wire, HeaderEdit};
use ipnet::IpNet;

pub use crate::headers::{X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO, X_REAL_IP};

#[derive(Debug, Clone, Default)]
pub struct Forwarding {
    trusted: Vec<IpNet>,
}

/// What the client side of a request looked like, as far as Gatehouse can tell.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    /// The address that opened the connection (`None` on a Unix socket).
    pub addr: Option<IpAddr>,
    /// Whether the connection came in over TLS.
    pub tls: bool,
}

impl Forwarding {
    pub fn new(trusted: Vec<IpNet>) -> Self {
        Self { trusted }
    }

    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// Rewrites the forwarding headers in place and returns the client's address: the
    /// right-most address in the chain that is not a trusted proxy.
    pub fn apply(
        &self,
        headers: &mut impl HeaderEdit,
        peer: Peer,
        authority: Option<&str>,
    ) -> Option<IpAddr> {
        let peer_ip = peer.addr.map(|ip| ip.to_canonical());
        let trusted_peer = peer_ip.is_some_and(|ip| self.is_trusted(ip));
        let mut chain = String::new();
        let mut client = peer_ip;
        if trusted_peer {
            for value in headers.map().get_all(&X_FORWARDED_FOR) {
                if let Ok(v) = value.to_str() {
                    if !chain.is_empty() {
                        chain.push_str(", ");
                    }
                    chain.push_str(v.trim());
                }
            }
            let hops: Vec<IpAddr> = chain
                .split(',')
                .filter_map(|s| s.trim().parse().ok())
                .collect();
            if let Some(ip) = hops
                .iter()
                .rev()
                .find(|ip| !self.is_trusted(**ip))
                .or(hops.first())
            {
                client = Some(*ip);
            }
        } else {
            for name in [&X_FORWARDED_PROTO, &X_FORWARDED_HOST, &FORWARDED] {
                headers.remove(name);
            }
        }
        headers.remove(&X_FORWARDED_FOR);
        headers.remove(&X_REAL_IP);
        if let Some(ip) = peer_ip {
            if !chain.is_empty() {
                chain.push_str(", ");
            }
            push_ip(&mut chain, ip);
        }
        let chain = (!chain.is_empty())
            .then(|| HeaderValue::from_maybe_shared(Bytes::from(chain)).ok())
            .flatten();
        if let Some(v) = &chain {
            headers.insert(wire::X_FORWARDED_FOR, v.clone());
        }
        if let Some(ip) = client {
            let value = match chain {
                // From an untrusted peer the chain is the peer's address, which is the client.
                Some(v) if !trusted_peer => Some(v),
                _ => {
                    let mut text = String::with_capacity(15);
                    push_ip(&mut text, ip);
                    HeaderValue::from_str(&text).ok()
                }
            };
            if let Some(v) = value {
                headers.insert(wire::X_REAL_IP, v);
            }
        }
        if !headers.map().contains_key(&X_FORWARDED_PROTO) {
            let proto = if peer.tls { "https" } else { "http" };
            headers.insert(wire::X_FORWARDED_PROTO, HeaderValue::from_static(proto));
        }
        if !headers.map().contains_key(&X_FORWARDED_HOST) {
            let host = headers
                .map()
                .get(HOST)
                .cloned()
                .or_else(|| authority.and_then(|a| HeaderValue::from_str(a).ok()));
            if let Some(host) = host {
                headers.insert(wire::X_FORWARDED_HOST, host);
            }
        }
        client
    }
}

/// Writes an address as `Display` does; IPv4 (the usual peer) without the formatting
/// machinery, since every request writes it twice.
fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                if octet >= 100 {
                    out.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    out.push(char::from(b'0' + octet / 10 % 10));
                }
                out.push(char::from(b'0' + octet % 10));
            }
        }
        IpAddr::V6(_) => {
            use std::fmt::Write;
            let _ = write!(out, "{ip}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    fn peer(ip: &str) -> Peer {
        Peer {
            addr: Some(ip.parse().unwrap()),
            tls: false,
        }
    }

    fn with_spoof() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, "6.6.6.6".parse().unwrap());
        h.insert(X_FORWARDED_PROTO, "https".parse().unwrap());
        h.insert(X_FORWARDED_HOST, "evil.example".parse().unwrap());
        h.insert(X_REAL_IP, "6.6.6.6".parse().unwrap());
        h.insert(HOST, "app.example".parse().unwrap());
        h
    }

    #[test]
    fn untrusted_peer_cannot_set_forwarding_headers() {
        let f = Forwarding::new(vec!["10.0.0.0/8".parse().unwrap()]);
        let mut h = with_spoof();
        let client = f.apply(&mut h, peer("192.0.2.7"), None);
        assert_eq!(client, Some("192.0.2.7".parse().unwrap()));
        assert_eq!(h[&X_FORWARDED_FOR], "192.0.2.7");
        assert_eq!(h[&X_FORWARDED_PROTO], "http");
        assert_eq!(h[&X_FORWARDED_HOST], "app.example");
        assert_eq!(h[&X_REAL_IP], "192.0.2.7");
    }

    #[test]
    fn trusted_peer_appends_and_the_client_is_the_last_untrusted_hop() {
        let f = Forwarding::new(vec!["10.0.0.0/8".parse().unwrap()]);
        let mut h = with_spoof();
        h.insert(
            X_FORWARDED_FOR,
            "6.6.6.6, 198.51.100.1, 10.1.1.1".parse().unwrap(),
        );
        let client = f.apply(&mut h, peer("10.0.0.2"), None);
        assert_eq!(client, Some("198.51.100.1".parse().unwrap()));
        assert_eq!(
            h[&X_FORWARDED_FOR],
            "6.6.6.6, 198.51.100.1, 10.1.1.1, 10.0.0.2"
        );
        assert_eq!(h[&X_FORWARDED_PROTO], "https");
        assert_eq!(h[&X_FORWARDED_HOST], "evil.example");
        assert_eq!(h[&X_REAL_IP], "198.51.100.1");
    }

    /// A trusted proxy's chain with bytes outside visible ASCII or hops that are no address:
    /// the unreadable value is dropped, the header stays valid text, and the client named
    /// upstream is still an address Gatehouse parsed.
    #[test]
    fn a_hostile_chain_from_a_trusted_proxy_never_reaches_the_app_raw() {
        let f = Forwarding::new(vec!["10.0.0.0/8".parse().unwrap()]);
        let mut h = HeaderMap::new();
        h.append(
            X_FORWARDED_FOR,
            HeaderValue::from_bytes(b"6.6.6.6\xff\xfe").unwrap(),
        );
        h.append(
            X_FORWARDED_FOR,
            HeaderValue::from_bytes(b"not-an-ip,\t198.51.100.9 ").unwrap(),
        );
        h.insert(X_REAL_IP, HeaderValue::from_static("6.6.6.6"));
        let client = f.apply(&mut h, peer("10.0.0.2"), None);
        assert_eq!(client, Some("198.51.100.9".parse().unwrap()));
        let chain = h[&X_FORWARDED_FOR].to_str().expect("visible ASCII");
        assert_eq!(chain, "not-an-ip,\t198.51.100.9, 10.0.0.2");
        assert_eq!(h[&X_REAL_IP], "198.51.100.9");
    }

    /// An IPv6 peer (and an IPv4-mapped one, which is shown as IPv4) is written as `Display`
    /// writes it, in both headers.
    #[test]
    fn an_ipv6_peer_is_written_in_its_usual_form() {
        let f = Forwarding::default();
        for (addr, shown) in [
            ("2001:db8::7", "2001:db8::7"),
            ("::ffff:192.0.2.9", "192.0.2.9"),
        ] {
            let mut h = HeaderMap::new();
            f.apply(&mut h, peer(addr), None);
            assert_eq!(h[&X_FORWARDED_FOR], shown);
            assert_eq!(h[&X_REAL_IP], shown);
        }
    }

    proptest::proptest! {
        /// Every address is written exactly as `Display` writes it.
        #[test]
        fn addresses_are_written_as_display_writes_them(v4 in proptest::prelude::any::<[u8; 4]>(), v6 in proptest::prelude::any::<[u16; 8]>()) {
            for ip in [IpAddr::from(v4), IpAddr::from(v6)] {
                let mut out = String::new();
                push_ip(&mut out, ip);
                proptest::prop_assert_eq!(out, ip.to_string());
            }
        }
    }
}
