//! The test harness itself (`tests/common`): listeners bound on port 0 and read back, served
//! as bound, and in-process servers that stop when dropped.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{bind_gatehouse, config_text, get_status, start, start_echo, start_on};

const OPEN: &str = "[[public]]\npath = \"/\"\nmatch = \"prefix\"\n";

/// Whether nothing accepts connections on `addr` any more (polled for up to 2 s: an aborted
/// task lets go of its listener on its runtime's next turn).
async fn closes(addr: SocketAddr) -> bool {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// Listeners bound before Gatehouse starts (port 0, addresses read back) are the ones it
/// serves on: the addresses another party was told are right from the first request.
#[tokio::test]
async fn gatehouse_serves_on_the_listeners_bound_before_it_started() {
    let listeners = bind_gatehouse();
    let bound = listeners.addresses();
    assert_ne!(bound.proxy[0].port(), 0);
    assert_ne!(bound.admin.port(), 0);
    let upstream = start_echo().await;
    let config = config_text(upstream.addr, OPEN);
    let h = start_on(upstream, &config, listeners);
    assert_eq!(h.gatehouse.addresses.proxy, bound.proxy);
    assert_eq!(h.gatehouse.addresses.admin, bound.admin);
    let url = format!("http://{}/x", bound.proxy[0]);
    assert_eq!(get_status(&url).await, Some(200));
    let ping = format!("http://{}/ping", bound.admin);
    assert_eq!(get_status(&ping).await, Some(200));
}

/// Dropping a harness stops its Gatehouse (proxy and admin listeners closed when the drop
/// returns) and its echo upstream; a Gatehouse started after it in the same process serves
/// (pingora's no-steal runtimes could not be restarted in one process: see `server::spawn_on`).
#[tokio::test]
async fn a_dropped_harness_stops_its_servers_and_the_next_one_serves() {
    let first = start(OPEN).await;
    assert_eq!(get_status(&first.url("/a")).await, Some(200));
    let (proxy, admin, upstream) = (
        first.proxy(),
        first.gatehouse.addresses.admin,
        first.upstream,
    );
    drop(first);
    assert!(
        tokio::net::TcpStream::connect(proxy).await.is_err(),
        "the proxy listener is still open"
    );
    assert!(
        tokio::net::TcpStream::connect(admin).await.is_err(),
        "the admin listener is still open"
    );
    assert!(closes(upstream).await, "the echo upstream is still open");

    for _ in 0..2 {
        let next = start(OPEN).await;
        assert_eq!(get_status(&next.url("/b")).await, Some(200));
        assert_eq!(get_status(&next.admin_url("/ping")).await, Some(200));
    }
}
