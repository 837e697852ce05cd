//! Building and running the pingora server: the proxy service (plain and TLS listeners) and
//! the admin service, over listeners bound up front.

pub use crate::conns;
pub mod prebound;
pub mod shared_keys;

pub mod shutdown;

use std::net::SocketAddr;
use std::sync::Arc;

use pingora::apps::HttpServerOptions;
use pingora::listeners::tls::TlsSettings;
use pingora::protocols::http::v2::server::default_h2_options;
use pingora::proxy::http_proxy;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignalWatch};
use pingora::services::listening::Service as ListeningService;
use tokio::sync::watch;

use crate::admin::AdminApp;
use crate::auth::discovery::{Discovery, DiscoveryQueue, SessionSweeper};
use crate::auth::Auth;
use crate::clock::Clock;
use crate::config::Config;
use crate::health::Readiness;
use crate::identity::assertion::AssertionSigner;
use crate::metrics::Metrics;
use crate::proxy::resolve::{self, ResolveError};
use crate::proxy::Gatehouse;
use crate::reload::certs::{Certificates, Loaded};
use crate::store::Store;
use conns::{Deadlines, Guarded, Limits};
use pingora::services::background::background_service;
use prebound::{Bound, PreBound};

/// Open connections the admin listener holds (its own budget, apart from the proxy's).
pub const ADMIN_MAX_CONNECTIONS: usize = 32;

/// Why Gatehouse could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} ({what} listener): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot load the TLS certificate or key: {0}")]
    Tls(String),
    #[error("cannot set up metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot start the server thread: {0}")]
    Thread(std::io::Error),
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    Auth(#[from] crate::auth::AuthSetupError),
    #[error("identity header signing key: {0}")]
    Signing(#[from] crate::identity::assertion::AssertionError),
    #[error("{0}")]
    Resolve(#[from] ResolveError),
}

/// Where a started Gatehouse listens (ports resolved, so port 0 in config shows its real port).
#[derive(Debug, Clone)]
pub struct Addresses {
    pub proxy: Vec<SocketAddr>,
    pub tls: Vec<SocketAddr>,
    pub admin: SocketAddr,
}

/// A server with its sockets bound, ready to run.
pub struct Prepared {
    server: Server,
    pub addresses: Addresses,
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
    /// The clock every expiry is read on.
    pub clock: Clock,
    /// The store, when a connection is configured.
    pub store: Option<Arc<Store>>,
    /// Reloads the config file, when the config came from one.
    reloader: Option<Arc<crate::reload::Reloader>>,
}

fn bind_all(addrs: &[SocketAddr], what: &'static str) -> Result<Vec<Bound>, StartError> {
    addrs.iter().map(|a| Bound::bind(*a, what)).collect()
}

/// Every socket Gatehouse serves on, bound and listening, not yet served. Bind them before
/// Gatehouse's config exists (port 0, then [`Listeners::addresses`]) to tell another party
/// (an IdP's redirect URIs) where Gatehouse will be, with no port released in between.
pub struct Listeners {
    proxy: Vec<Bound>,
    tls: Vec<Bound>,
    admin: Bound,
}

impl Listeners {
    /// Binds the addresses of `[server]`: `listen`, `tls_listen` (when TLS is set up) and
    /// `admin_listen`.
    pub fn bind(server: &crate::config::model::Server) -> Result<Self, StartError> {
        let tls = match &server.tls {
            Some(tls) => tls.listen.as_slice(),
            None => &[],
        };
        Self::bind_addrs(&server.listen, tls, server.admin_listen)
    }

    /// Binds these addresses (port 0: the kernel picks one; [`Listeners::addresses`] tells).
    pub fn bind_addrs(
        proxy: &[SocketAddr],
        tls: &[SocketAddr],
        admin: SocketAddr,
    ) -> Result<Self, StartError> {
        Ok(Self {
            proxy: bind_all(proxy, "proxy")?,
            tls: bind_all(tls, "proxy TLS")?,
            admin: Bound::bind(admin, "admin")?,
        })
    }

    /// Where these listeners are bound (real ports, never 0).
    pub fn addresses(&self) -> Addresses {
        Addresses {
            proxy: self.proxy.iter().map(|b| b.addr).collect(),
            tls: self.tls.iter().map(|b| b.addr).collect(),
            admin: self.admin.addr,
        }
    }
}

/// Binds every listener and builds the services. Nothing is served until [`Prepared::run`].
pub fn prepare(config: &Config) -> Result<Prepared, StartError> {
    prepare_with_clock(config, Clock::system())
}

/// [`prepare`] on `clock`: every expiry (sessions, login states, tokens, the signed header,
/// pending second factors) is read on it. Only tests pass another clock than
/// [`Clock::system`], to advance it instead of sleeping; there is no config key for it.
pub fn prepare_with_clock(config: &Config, clock: Clock) -> Result<Prepared, StartError> {
    prepare_on(config, Listeners::bind(&config.server)?, clock)
}

/// [`prepare_with_clock`] on listeners bound beforehand: they replace the addresses in
/// `[server] listen`, `tls_listen` and `admin_listen`. TLS listeners are served with TLS only
/// when `[server]` sets up TLS.
pub fn prepare_on(
    config: &Config,
    listeners: Listeners,
    clock: Clock,
) -> Result<Prepared, StartError> {
    build(config, listeners, clock, Runtimes::NoSteal, None)
}

/// [`prepare`] for a config read from `path`: SIGHUP (once [`Prepared::run_until_signal`]
/// runs) and `POST /api/reload` on the admin listener read it again (see [`crate::reload`]).
pub fn prepare_from_file(config: &Config, path: &std::path::Path) -> Result<Prepared, StartError> {
    build(
        config,
        Listeners::bind(&config.server)?,
        Clock::system(),
        Runtimes::NoSteal,
        Some(path),
    )
}

/// The kind of tokio runtimes the services run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Runtimes {
    /// One single-threaded runtime per worker: +16% req/s in benches/load.sh on 2 cores
    /// (fewer cross-thread wake-ups). For the one server of a process.
    NoSteal,
    /// One work-stealing pool per service. For servers started and stopped inside another
    /// program: pingora-runtime 0.9.1 keeps each no-steal worker's runtime handle in a
    /// `thread_local::ThreadLocal` set with `get_or`, and thread ids are recycled, so a worker
    /// of a later no-steal server can inherit the handle of a stopped one and spawn its
    /// listeners onto a dead runtime (the later server then never accepts).
    Stealing,
}

fn build(
    config: &Config,
    listeners: Listeners,
    clock: Clock,
    runtimes: Runtimes,
    source: Option<&std::path::Path>,
) -> Result<Prepared, StartError> {
    let metrics = Arc::new(Metrics::new()?);
    let readiness = Arc::new(Readiness::default());

    let addresses = listeners.addresses();
    let Listeners {
        proxy: proxy_sockets,
        tls: tls_sockets,
        admin: admin_socket,
    } = listeners;
    // Upstream host names are resolved now, once; a background service keeps them current.
    let (peers, dns_refresher) = resolve::resolve_at_start(
        &config.upstreams,
        resolve::system_lookup(),
        config.server.dns_refresh,
        metrics.clone(),
    )?;

    let grace = config.server.shutdown_grace.as_secs_f64().ceil() as u64;
    let conf = ServerConf {
        threads: config.server.worker_threads,
        grace_period_seconds: Some(grace),
        graceful_shutdown_timeout_seconds: Some(1),
        upstream_keepalive_pool_size: config.server.upstream_keepalive_pool,
        // See [`Runtimes`]: single-threaded runtimes per worker unless embedded.
        work_stealing: runtimes == Runtimes::Stealing,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let clients = config.server.clients;
    let mut server_options = HttpServerOptions::default();
    server_options.h2c = true;
    // An h2 connection without open streams is closed like an idle HTTP/1 one.
    server_options.h2_idle_timeout = Some(clients.idle_timeout);
    let mut h2_options = default_h2_options();
    h2_options.max_concurrent_streams(clients.h2_max_concurrent_streams);
    // The login machinery, and its store, exist only when a connection is configured.
    let store = if config.connections.is_empty() {
        None
    } else {
        let store = Store::open_configured(config)?;
        shared_keys::share(config, &store)?;
        Some(Arc::new(store))
    };
    let auth = match &store {
        Some(store) => {
            Auth::new(config, store.clone(), metrics.auth.clone(), clock.clone())?.map(Arc::new)
        }
        None => None,
    };
    if let Some(auth) = &auth {
        auth.follow_store(readiness.clone());
        readiness.require_idps(config.server.ready_requires_idp);
        let providers = auth.settings().providers.clone();
        readiness.expect_idps(providers.len());
        let (queue, added) = DiscoveryQueue::new(readiness.clone());
        auth.set_discovery_queue(queue);
        server.add_service(background_service(
            "idp discovery",
            Discovery {
                providers,
                readiness: readiness.clone(),
                metrics: metrics.auth.clone(),
                added: std::sync::Mutex::new(Some(added)),
            },
        ));
        server.add_service(background_service(
            "session sweeper",
            SessionSweeper { auth: auth.clone() },
        ));
    }
    let users_api = match (&auth, &config.admin.token) {
        (Some(auth), Some(token)) => Some((auth.clone(), token.clone())),
        _ => None,
    };
    let signer = match (&auth, &config.identity.signing) {
        (Some(_), Some(signing)) => Some(Arc::new(AssertionSigner::load_or_create(
            signing.alg,
            signing.key_file.as_deref(),
            &config.data_dir,
        )?)),
        _ => None,
    };
    let resolver = dns_refresher.handle();
    server.add_service(background_service("upstream dns refresh", dns_refresher));
    let gatehouse = Gatehouse::new(
        config,
        metrics.clone(),
        readiness.clone(),
        auth.clone(),
        signer.clone(),
        &peers,
    );
    // The TLS certificate, read and checked now (a bad file is a clean startup error).
    let certificates = match &config.server.tls {
        Some(tls) => {
            let loaded =
                Loaded::read(&tls.cert, &tls.key).map_err(|e| StartError::Tls(e.to_string()))?;
            Some(Arc::new(Certificates::new(loaded, metrics.config.clone())))
        }
        None => None,
    };
    let reloader = source.map(|path| {
        Arc::new(crate::reload::Reloader::new(
            path,
            config,
            crate::reload::ReloadTarget {
                routing: gatehouse.routing_slot(),
                resolver,
                auth: auth.clone(),
                signer,
                clock: clock.clone(),
                metrics: metrics.clone(),
                certificates: certificates.clone(),
            },
        ))
    });
    let reload_api = match (&reloader, &config.admin.token) {
        (Some(reloader), Some(token)) => Some((reloader.clone(), token.clone())),
        _ => None,
    };
    let mut app = http_proxy(&server.configuration, gatehouse);
    app.server_options = Some(server_options);
    app.h2_options = Some(h2_options);
    let app = Guarded::new(
        app,
        crate::metrics::Listener::Proxy,
        Limits {
            max: clients.max_connections,
            per_ip: clients.max_connections_per_ip,
        },
        Deadlines::from(&clients),
        metrics.conns.clone(),
    );
    let mut proxy = ListeningService::new("gatehouse proxy".to_string(), app);
    for socket in &proxy_sockets {
        proxy.add_tcp(&socket.key());
    }
    // Every TLS listener asks `certificates` at each handshake: a reload swaps it.
    if let Some(certificates) = &certificates {
        for socket in &tls_sockets {
            // No paths: pingora reads no file, the resolver answers.
            let mut settings =
                TlsSettings::intermediate("", "").map_err(|e| StartError::Tls(e.to_string()))?;
            settings.set_cert_resolver(certificates.clone());
            settings.enable_h2();
            proxy.add_tls_with_settings(&socket.key(), None, settings);
        }
    }
    let mut sockets = proxy_sockets;
    sockets.extend(tls_sockets);
    server.add_service(PreBound::new(proxy, sockets));

    // The admin listener has its own, small, connection budget: a saturated proxy listener
    // leaves /metrics and /ready reachable.
    let admin_app = Guarded::new(
        AdminApp::new(metrics.clone(), readiness.clone(), users_api, reload_api),
        crate::metrics::Listener::Admin,
        Limits {
            max: ADMIN_MAX_CONNECTIONS,
            per_ip: None,
        },
        Deadlines::from(&clients),
        metrics.conns.clone(),
    );
    let mut admin = ListeningService::new("gatehouse admin".to_string(), admin_app);
    admin.threads = Some(1);
    admin.add_tcp(&admin_socket.key());
    server.add_service(PreBound::new(admin, vec![admin_socket]));

    Ok(Prepared {
        server,
        addresses,
        metrics,
        readiness,
        clock,
        store,
        reloader,
    })
}

impl Prepared {
    /// Serves until `signals` says stop, then drains. Blocks.
    pub fn run(self, signals: Box<dyn ShutdownSignalWatch>) {
        self.readiness.set_serving();
        self.server.run(RunArgs {
            shutdown_signal: signals,
        });
    }

    /// Serves until SIGTERM or SIGINT, drains, and returns when every request has finished
    /// (the process exits early once nothing is in flight). For the binary.
    pub fn run_until_signal(self) {
        if let Some(reloader) = &self.reloader {
            if let Err(e) = reloader.on_sighup() {
                tracing::error!(error = %e, "cannot listen for SIGHUP: reload with POST /api/reload");
            }
        }
        shutdown::exit_when_drained(self.server.watch_execution_phase(), self.metrics.clone());
        // systemd (`Type=notify`) hears READY=1 once the signal handlers are in place.
        let signals = Box::new(shutdown::OsSignals {
            readiness: self.readiness.clone(),
            announced: Default::default(),
        });
        self.run(signals);
    }
}

/// A Gatehouse running on a background thread of this process (for tests and embedding).
/// Dropping it stops it at once (no grace period) and waits, for at most 5 s, until its
/// listeners are closed.
pub struct Running {
    pub addresses: Addresses,
    pub metrics: Arc<Metrics>,
    clock: Clock,
    /// The store (tests look into it, or make it slow).
    pub store: Option<Arc<Store>>,
    stop: watch::Sender<shutdown::Stop>,
    /// Receives when the server thread has finished (in a mutex: `Running` stays `Sync`).
    finished: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
}

impl Running {
    /// Begins a graceful shutdown (drain within `shutdown_grace`).
    pub fn stop(&self) {
        let _ = self.stop.send(shutdown::Stop::Drain);
    }

    /// The clock every expiry is read on; a test that started Gatehouse with
    /// [`spawn_with_clock`] and a [`Clock::manual`] advances it.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }
}

/// How long dropping a [`Running`] waits for its thread to finish.
const STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl Drop for Running {
    fn drop(&mut self) {
        let deadline = std::time::Instant::now() + STOP_WAIT;
        let _ = self.stop.send(shutdown::Stop::Now);
        if let Ok(finished) = self.finished.lock() {
            let _ = finished.recv_timeout(STOP_WAIT);
        }
        // Pingora's quick shutdown returns once it has told the runtimes to stop (tokio's
        // `shutdown_timeout(0)`); their worker threads drop the listening tasks, and so close
        // the sockets, a moment later (longer on a loaded machine). Wait for that too.
        let listening = self.addresses.proxy.iter().chain(&self.addresses.tls);
        for addr in listening.chain(std::iter::once(&self.addresses.admin)) {
            while std::time::Instant::now() < deadline
                && std::net::TcpStream::connect_timeout(addr, std::time::Duration::from_millis(100))
                    .is_ok()
            {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
    }
}

/// Prepares and starts Gatehouse on a background thread.
pub fn spawn(config: &Config) -> Result<Running, StartError> {
    spawn_on(config, Listeners::bind(&config.server)?)
}

/// [`spawn`] on `clock` (for tests: a [`Clock::manual`] they advance instead of sleeping).
pub fn spawn_with_clock(config: &Config, clock: Clock) -> Result<Running, StartError> {
    spawn_on_with_clock(config, Listeners::bind(&config.server)?, clock)
}

/// [`spawn`] on listeners bound beforehand (see [`Listeners`] and [`prepare_on`]). Runs on
/// work-stealing runtimes, so that servers can be stopped and started again in one process.
pub fn spawn_on(config: &Config, listeners: Listeners) -> Result<Running, StartError> {
    spawn_on_with_clock(config, listeners, Clock::system())
}

/// [`spawn_on`] on `clock`.
pub fn spawn_on_with_clock(
    config: &Config,
    listeners: Listeners,
    clock: Clock,
) -> Result<Running, StartError> {
    spawn_inner(config, listeners, clock, None)
}

/// [`spawn_on`] for a config read from `path`, reloadable with `POST /api/reload` on the
/// admin listener (SIGHUP is the binary's: a test process keeps its own signal handling).
pub fn spawn_reloadable(
    config: &Config,
    listeners: Listeners,
    path: &std::path::Path,
) -> Result<Running, StartError> {
    spawn_inner(config, listeners, Clock::system(), Some(path))
}

fn spawn_inner(
    config: &Config,
    listeners: Listeners,
    clock: Clock,
    source: Option<&std::path::Path>,
) -> Result<Running, StartError> {
    let prepared = build(config, listeners, clock, Runtimes::Stealing, source)?;
    let (stop, stop_rx) = watch::channel(shutdown::Stop::Run);
    let (done, finished) = std::sync::mpsc::channel();
    let running = Running {
        addresses: prepared.addresses.clone(),
        metrics: prepared.metrics.clone(),
        clock: prepared.clock.clone(),
        store: prepared.store.clone(),
        stop,
        finished: std::sync::Mutex::new(finished),
    };
    let signals = Box::new(shutdown::Manual {
        stop: stop_rx,
        readiness: prepared.readiness.clone(),
    });
    std::thread::Builder::new()
        .name("gatehouse".into())
        .spawn(move || {
            prepared.run(signals);
            let _ = done.send(());
        })
        .map_err(StartError::Thread)?;
    Ok(running)
}
