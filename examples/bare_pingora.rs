//! The benchmark baseline: the smallest pingora proxy (one upstream, no filters, same
//! allocator and runtime settings as Gatehouse), so `benches/load.sh` can tell Gatehouse's own
//! cost apart from the framework's.
//!
//! ```text
//! cargo run --release --example bare_pingora -- 127.0.0.1:4190 127.0.0.1:8080 2
//! curl -s http://127.0.0.1:4190/
//! ```
//!
//! pingora's own settings, for `SETTINGS=1 benches/load.sh` (issue 14 asks which of them move
//! the CPU per request); unset, each keeps the value Gatehouse runs with:
//! - `BARE_STEALING=1`: one work-stealing runtime for the workers instead of one runtime each;
//! - `BARE_POOL=N`: idle upstream connections kept (`upstream_keepalive_pool_size`, 128);
//! - `BARE_LISTENER_TASKS=N`: accept tasks per listening socket (`listener_tasks_per_fd`, 1);
//! - `BARE_SOCKET_BUF=BYTES`: the kernel's send and receive buffers of accepted connections,
//!   and the receive buffer of upstream connections (the kernel's defaults otherwise);
//! - `BARE_L4_READ=BYTES`, `BARE_L4_WRITE=BYTES`: pingora's own read and write buffers of a
//!   client connection (64 KiB and 1,460 bytes; 0 reads and writes the socket directly).

use async_trait::async_trait;
use pingora::listeners::{L4BufferSettings, ListenerConfig, TcpSocketOptions};
use pingora::prelude::HttpPeer;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::Server;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare {
    upstream: std::net::SocketAddr,
    upstream_recv_buf: Option<usize>,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut (),
    ) -> pingora::Result<Box<HttpPeer>> {
        let mut peer = HttpPeer::new(self.upstream, false, String::new());
        peer.options.tcp_recv_buf = self.upstream_recv_buf;
        Ok(Box::new(peer))
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:4190".into());
    let upstream = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:8080".into())
        .parse()
        .expect("upstream address");
    let threads = args.next().and_then(|t| t.parse().ok()).unwrap_or(2);
    let setting = |name: &str| -> Option<usize> {
        let value = std::env::var(name).ok()?;
        Some(
            value
                .parse()
                .unwrap_or_else(|_| panic!("{name} must be a number")),
        )
    };
    let socket_buf = setting("BARE_SOCKET_BUF");
    let conf = ServerConf {
        threads,
        work_stealing: setting("BARE_STEALING") == Some(1),
        upstream_keepalive_pool_size: setting("BARE_POOL").unwrap_or(128),
        listener_tasks_per_fd: setting("BARE_LISTENER_TASKS").unwrap_or(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let bare = Bare {
        upstream,
        upstream_recv_buf: socket_buf,
    };
    let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, bare);
    let mut socket = TcpSocketOptions::default();
    socket.tcp_snd_buf = socket_buf;
    socket.tcp_recv_buf = socket_buf;
    let l4 = L4BufferSettings {
        read: setting("BARE_L4_READ"),
        write: setting("BARE_L4_WRITE"),
    };
    proxy.add_listener(
        ListenerConfig::tcp(listen)
            .tcp_socket_options(socket)
            .l4_buffer(l4),
    );
    server.add_service(proxy);
    server.run_forever();
}
