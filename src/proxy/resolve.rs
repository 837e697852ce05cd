//! Upstream addresses. An upstream given by IP is connected to as written. One given by host
//! name is resolved when the server starts (a name that does not resolve then stops the start,
//! naming its key path, as nginx and oauth2-proxy do), and again in the background every
//! `[server] dns_refresh`, so a DNS change needs no restart. The config checks never resolve:
//! `check-config` needs no network.
//!
//! The proxy reads each upstream's peer through an atomic pointer ([`ArcSwap`]): a request never
//! waits for DNS or for a lock. A failed re-resolution keeps the last good address, is logged
//! and counted (`gatehouse_dns_refresh_total{result="failed"}`).

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::prelude::HttpPeer;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::config::model::{Upstream, UpstreamAddress};
use crate::metrics::{DnsRefresh, Metrics};

/// Looks a host name and port up: every address it has, in the resolver's order.
pub type Lookup = Arc<dyn Fn(&str, u16) -> io::Result<Vec<SocketAddr>> + Send + Sync>;

/// The system resolver (`getaddrinfo`: `/etc/hosts`, then DNS). Blocks: call it at startup
/// or on the blocking pool, never on a proxy thread.
pub fn system_lookup() -> Lookup {
    Arc::new(|host, port| Ok((host, port).to_socket_addrs()?.collect()))
}

/// One upstream's peer as the proxy sees it now; replaced whole when its address changes.
pub type PeerSlot = Arc<ArcSwap<HttpPeer>>;

/// The pingora peer for an upstream at `address`: TLS, SNI and its timeouts from the config.
pub fn peer_for(u: &Upstream, address: SocketAddr) -> HttpPeer {
    let mut peer = HttpPeer::new(address, u.tls, u.sni.clone());
    peer.options.connection_timeout = Some(u.connect_timeout);
    peer.options.read_timeout = Some(u.read_timeout);
    peer.options.write_timeout = Some(u.read_timeout);
    peer
}

/// An upstream host name that did not resolve when the server started.
#[derive(Debug, thiserror::Error)]
#[error("upstreams[{index}].url: `{host}` does not resolve ({reason})")]
pub struct ResolveError {
    /// The upstream's position in the config file.
    pub index: usize,
    pub host: String,
    pub reason: String,
}

/// Every upstream's peer slot, by upstream id.
pub struct UpstreamPeers {
    by_id: HashMap<String, PeerSlot>,
}

impl UpstreamPeers {
    /// The slot of the upstream with this id.
    pub fn get(&self, id: &str) -> Option<PeerSlot> {
        self.by_id.get(id).cloned()
    }
}

/// The first address of `host:port`, or why there is none.
fn first_address(lookup: &Lookup, host: &str, port: u16) -> Result<SocketAddr, String> {
    let answers = lookup(host, port).map_err(|e| e.to_string())?;
    answers
        .first()
        .copied()
        .ok_or_else(|| "no address".to_string())
}

/// Resolves every upstream host name once (at server start) and builds the peers. Returns
/// the refresher that keeps them current (it has nothing to do while every upstream is an IP
/// address, and picks up the names of a reloaded config, see [`Refresher::resolve`]).
pub fn resolve_at_start(
    upstreams: &[Upstream],
    lookup: Lookup,
    every: Duration,
    metrics: Arc<Metrics>,
) -> Result<(UpstreamPeers, Refresher), ResolveError> {
    let (peers, names) = resolve_all(upstreams, &lookup)?;
    let refresher = Refresher {
        state: Arc::new(RefreshState {
            names: ArcSwap::from_pointee(names),
            lookup,
            metrics,
        }),
        every,
    };
    Ok((peers, refresher))
}

/// Every upstream's peer, resolving host names now, and the named ones to refresh.
fn resolve_all(
    upstreams: &[Upstream],
    lookup: &Lookup,
) -> Result<(UpstreamPeers, Vec<Named>), ResolveError> {
    let mut by_id = HashMap::new();
    let mut names = Vec::new();
    for (index, u) in upstreams.iter().enumerate() {
        let address = match &u.address {
            UpstreamAddress::Ip(address) => *address,
            UpstreamAddress::Name { host, port } => {
                first_address(lookup, host, *port).map_err(|reason| ResolveError {
                    index,
                    host: host.clone(),
                    reason,
                })?
            }
        };
        let slot: PeerSlot = Arc::new(ArcSwap::from_pointee(peer_for(u, address)));
        if let UpstreamAddress::Name { host, port } = &u.address {
            names.push(Named {
                upstream: u.clone(),
                host: host.clone(),
                port: *port,
                slot: slot.clone(),
            });
        }
        by_id.insert(u.id.clone(), slot);
    }
    Ok((UpstreamPeers { by_id }, names))
}

/// An upstream given by name, and the slot its resolved peer lives in.
struct Named {
    upstream: Upstream,
    host: String,
    port: u16,
    slot: PeerSlot,
}

struct RefreshState {
    /// Swapped whole when a reloaded config brings other upstreams.
    names: ArcSwap<Vec<Named>>,
    lookup: Lookup,
    metrics: Arc<Metrics>,
}

/// Resolves the upstream host names again every `dns_refresh` (a background service).
pub struct Refresher {
    state: Arc<RefreshState>,
    every: Duration,
}

impl Refresher {
    /// One pass over every upstream host name: resolves it, swaps in a new peer where the
    /// address in use is no longer among the answers, keeps the old one where the lookup
    /// fails. Returns the result per name, in config order. Blocks on the lookups.
    pub fn refresh(&self) -> Vec<DnsRefresh> {
        self.state.refresh()
    }

    /// A handle for a config reload: resolves a new set of upstreams (blocking on the lookups:
    /// call it off the proxy threads), and from then on refreshes their names instead.
    pub fn handle(&self) -> ResolveHandle {
        ResolveHandle {
            state: self.state.clone(),
        }
    }
}

/// Resolves the upstreams of a reloaded config (see [`Refresher::handle`]).
#[derive(Clone)]
pub struct ResolveHandle {
    state: Arc<RefreshState>,
}

impl ResolveHandle {
    /// The peers of `upstreams`, host names resolved now; their names replace the ones the
    /// refresher keeps current. A name that does not resolve fails the whole call and changes
    /// nothing.
    pub fn resolve(&self, upstreams: &[Upstream]) -> Result<UpstreamPeers, ResolveError> {
        let (peers, names) = resolve_all(upstreams, &self.state.lookup)?;
        self.state.names.store(Arc::new(names));
        Ok(peers)
    }
}

impl RefreshState {
    fn refresh(&self) -> Vec<DnsRefresh> {
        self.names
            .load()
            .iter()
            .map(|n| self.refresh_one(n))
            .collect()
    }

    fn refresh_one(&self, n: &Named) -> DnsRefresh {
        let current = n.slot.load()._address.clone();
        let result = match (self.lookup)(&n.host, n.port) {
            Ok(answers) if current.as_inet().is_some_and(|a| answers.contains(a)) => {
                DnsRefresh::Unchanged
            }
            Ok(answers) => match answers.first() {
                Some(&address) => {
                    n.slot.store(Arc::new(peer_for(&n.upstream, address)));
                    tracing::info!(upstream = %n.upstream.id, host = %n.host, from = %current, to = %address, "upstream address changed");
                    DnsRefresh::Changed
                }
                None => {
                    tracing::warn!(upstream = %n.upstream.id, host = %n.host, kept = %current, "upstream host name resolves to no address; keeping the last one");
                    DnsRefresh::Failed
                }
            },
            Err(e) => {
                tracing::warn!(upstream = %n.upstream.id, host = %n.host, kept = %current, error = %e, "upstream host name does not resolve; keeping the last address");
                DnsRefresh::Failed
            }
        };
        self.metrics.dns_refresh(result);
        result
    }
}

#[async_trait]
impl BackgroundService for Refresher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.every) => {}
                _ = shutdown.changed() => return,
            }
            if self.state.names.load().is_empty() {
                continue;
            }
            // The lookups block (getaddrinfo): on the blocking pool, off this runtime.
            let state = self.state.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || state.refresh()).await {
                tracing::error!(error = %e, "upstream DNS refresh failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    fn upstreams(urls: &[&str]) -> Vec<Upstream> {
        let mut text = "[server]\ndeny_all = true\n".to_string();
        for (i, url) in urls.iter().enumerate() {
            text.push_str(&format!(
                "[[upstreams]]\nid = \"u{i}\"\nhost = \"u{i}.example\"\nurl = \"{url}\"\n"
            ));
        }
        crate::config::parse(&text)
            .unwrap_or_else(|e| panic!("{e}"))
            .upstreams
    }

    /// A lookup whose answer the test sets; counts its calls.
    struct Scripted {
        answer: Mutex<io::Result<Vec<SocketAddr>>>,
        calls: AtomicUsize,
    }

    impl Scripted {
        fn new(first: &[&str]) -> Arc<Self> {
            Arc::new(Self {
                answer: Mutex::new(Ok(addrs(first))),
                calls: AtomicUsize::new(0),
            })
        }

        fn answer(&self, answer: io::Result<Vec<SocketAddr>>) {
            *self.answer.lock().unwrap() = answer;
        }

        fn lookup(self: &Arc<Self>) -> Lookup {
            let me = self.clone();
            Arc::new(move |_host, _port| {
                me.calls.fetch_add(1, Ordering::SeqCst);
                match &*me.answer.lock().unwrap() {
                    Ok(a) => Ok(a.clone()),
                    Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
                }
            })
        }
    }

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    fn counted(metrics: &Metrics, result: DnsRefresh) -> u64 {
        let text = String::from_utf8(metrics.render()).unwrap();
        let sample = format!(
            "gatehouse_dns_refresh_total{{result=\"{}\"}} ",
            result.as_str()
        );
        text.lines()
            .find_map(|l| l.strip_prefix(&sample))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {sample} in {text}"))
    }

    /// A host name is resolved at start (its port kept), an IP address never is, and with no
    /// host name at all there is nothing to refresh.
    #[test]
    fn names_are_resolved_at_start_and_ip_addresses_never() {
        let dns = Scripted::new(&["10.0.0.7:8080"]);
        let list = upstreams(&["http://app.internal:8080", "https://192.0.2.1"]);
        let metrics = Arc::new(Metrics::new().unwrap());
        let (peers, refresher) = resolve_at_start(
            &list,
            dns.lookup(),
            Duration::from_secs(30),
            metrics.clone(),
        )
        .unwrap();
        assert_eq!(dns.calls.load(Ordering::SeqCst), 1);
        assert_eq!(refresher.state.names.load().len(), 1);
        let app = peers.get("u0").unwrap().load_full();
        assert_eq!(app._address.to_string(), "10.0.0.7:8080");
        let ip = peers.get("u1").unwrap().load_full();
        assert_eq!(ip._address.to_string(), "192.0.2.1:443");
        assert_eq!(ip.sni, "192.0.2.1");

        let only_ips = upstreams(&["http://127.0.0.1:1"]);
        let (_, refresher) =
            resolve_at_start(&only_ips, dns.lookup(), Duration::from_secs(30), metrics).unwrap();
        assert!(refresher.state.names.load().is_empty());
        assert_eq!(dns.calls.load(Ordering::SeqCst), 1);
    }

    /// A name that does not resolve (an error, or no address) when the server starts stops
    /// the start with an error naming the key path of the upstream's URL.
    #[test]
    fn a_name_that_does_not_resolve_at_start_names_its_key_path() {
        let list = upstreams(&["http://127.0.0.1:1", "http://gone.internal"]);
        let dns = Scripted::new(&[]);
        for answer in [
            Ok(vec![]),
            Err(io::Error::new(io::ErrorKind::NotFound, "no such host")),
        ] {
            dns.answer(answer);
            let metrics = Arc::new(Metrics::new().unwrap());
            let Err(e) = resolve_at_start(&list, dns.lookup(), Duration::from_secs(1), metrics)
            else {
                panic!("resolved a name with no address");
            };
            let text = e.to_string();
            assert!(
                text.starts_with("upstreams[1].url: `gone.internal` does not resolve"),
                "{text}"
            );
        }
    }

    /// The refresh step swaps in the new address when DNS changes, keeps the last good one
    /// when the lookup fails or answers nothing, and counts each result.
    #[test]
    fn a_refresh_follows_a_dns_change_and_keeps_the_last_good_address_on_failure() {
        let dns = Scripted::new(&["10.0.0.1:80"]);
        let list = upstreams(&["http://app.internal"]);
        let metrics = Arc::new(Metrics::new().unwrap());
        let (peers, refresher) =
            resolve_at_start(&list, dns.lookup(), Duration::from_secs(1), metrics.clone()).unwrap();

        let slot = peers.get("u0").unwrap();
        let now = || slot.load()._address.to_string();

        assert_eq!(refresher.refresh(), vec![DnsRefresh::Unchanged]);
        assert_eq!(now(), "10.0.0.1:80");

        dns.answer(Ok(addrs(&["10.0.0.2:80"])));
        assert_eq!(refresher.refresh(), vec![DnsRefresh::Changed]);
        assert_eq!(now(), "10.0.0.2:80");
        // The new peer keeps the upstream's settings.
        assert_eq!(slot.load().options.read_timeout, Some(list[0].read_timeout));

        dns.answer(Err(io::Error::new(io::ErrorKind::TimedOut, "dns down")));
        assert_eq!(refresher.refresh(), vec![DnsRefresh::Failed]);
        assert_eq!(now(), "10.0.0.2:80");
        dns.answer(Ok(vec![]));
        assert_eq!(refresher.refresh(), vec![DnsRefresh::Failed]);
        assert_eq!(now(), "10.0.0.2:80");

        dns.answer(Ok(addrs(&["10.0.0.3:80"])));
        assert_eq!(refresher.refresh(), vec![DnsRefresh::Changed]);
        assert_eq!(now(), "10.0.0.3:80");

        assert_eq!(counted(&metrics, DnsRefresh::Unchanged), 1);
        assert_eq!(counted(&metrics, DnsRefresh::Changed), 2);
        assert_eq!(counted(&metrics, DnsRefresh::Failed), 2);
    }

    /// A name with several addresses (round-robin DNS answers in a new order each time) keeps
    /// the address in use while it is still among the answers.
    #[test]
    fn an_address_still_among_the_answers_is_kept() {
        let dns = Scripted::new(&["10.0.0.1:80", "10.0.0.2:80"]);
        let list = upstreams(&["http://app.internal"]);
        let metrics = Arc::new(Metrics::new().unwrap());
        let (peers, refresher) =
            resolve_at_start(&list, dns.lookup(), Duration::from_secs(1), metrics).unwrap();

        dns.answer(Ok(addrs(&["10.0.0.2:80", "10.0.0.1:80"])));
        assert_eq!(refresher.refresh(), vec![DnsRefresh::Unchanged]);
        assert_eq!(
            peers.get("u0").unwrap().load()._address.to_string(),
            "10.0.0.1:80"
        );
    }

    /// The background service refreshes once per interval (driven by tokio's paused clock,
    /// no real waiting) and stops at shutdown.
    #[tokio::test(start_paused = true)]
    async fn the_background_service_refreshes_every_interval_until_shutdown() {
        let dns = Scripted::new(&["10.0.0.1:80"]);
        let list = upstreams(&["http://app.internal"]);
        let metrics = Arc::new(Metrics::new().unwrap());
        let (peers, refresher) =
            resolve_at_start(&list, dns.lookup(), Duration::from_secs(30), metrics).unwrap();

        let (stop, shutdown) = tokio::sync::watch::channel(false);
        dns.answer(Ok(addrs(&["10.0.0.9:80"])));
        let service = tokio::spawn(async move { refresher.start(shutdown).await });
        let slot = peers.get("u0").unwrap();
        // Not before the interval has passed.
        tokio::time::sleep(Duration::from_secs(29)).await;
        assert_eq!(dns.calls.load(Ordering::SeqCst), 1);
        assert_eq!(slot.load()._address.to_string(), "10.0.0.1:80");
        // Once it has: the blocking lookup runs on a real thread, so wait for its result.
        tokio::time::sleep(Duration::from_secs(2)).await;
        for _ in 0..100_000 {
            if dns.calls.load(Ordering::SeqCst) >= 2 {
                break;
            }
            tokio::task::yield_now().await;
            std::thread::yield_now();
        }
        assert!(dns.calls.load(Ordering::SeqCst) >= 2);
        stop.send(true).unwrap();
        service.await.unwrap();
        assert_eq!(slot.load()._address.to_string(), "10.0.0.9:80");
    }
}
