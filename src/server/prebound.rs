//! Listeners bound by Gatehouse before pingora starts. pingora binds inside each service's
//! thread and panics there when a port is taken, while the process keeps running; binding
//! first turns that into a startup error, and lets a listener on port 0 report its real port.
//! The sockets are handed to pingora through its table of inherited listeners, the same path
//! a zero-downtime upgrade uses.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::{IntoRawFd, RawFd};

use async_trait::async_trait;
use pingora::server::{ListenFds, ShutdownWatch};
use pingora::services::Service;

/// A listening socket, bound, not yet handed over.
pub struct Bound {
    pub addr: SocketAddr,
    listener: TcpListener,
}

impl Bound {
    /// Binds `addr` now. `what` names the listener in the error.
    pub fn bind(addr: SocketAddr, what: &'static str) -> Result<Self, super::StartError> {
        let bind_error = |source| super::StartError::Bind { what, addr, source };
        let listener = TcpListener::bind(addr).map_err(bind_error)?;
        listener.set_nonblocking(true).map_err(bind_error)?;
        let addr = listener.local_addr().map_err(bind_error)?;
        Ok(Self { addr, listener })
    }

    /// The key pingora looks the socket up by: the address string it is told to listen on.
    pub fn key(&self) -> String {
        self.addr.to_string()
    }

    fn into_fd(self) -> (String, RawFd) {
        (self.key(), self.listener.into_raw_fd())
    }
}

/// Wraps a pingora service so that its listeners are the pre-bound sockets.
pub struct PreBound<S> {
    inner: S,
    sockets: Vec<(String, RawFd)>,
}

impl<S> PreBound<S> {
    pub fn new(inner: S, sockets: Vec<Bound>) -> Self {
        Self {
            inner,
            sockets: sockets.into_iter().map(Bound::into_fd).collect(),
        }
    }
}

#[async_trait]
impl<S: Service> Service for PreBound<S> {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        listeners_per_fd: usize,
    ) {
        if let Some(table) = &fds {
            let mut table = table.lock();
            for (key, fd) in self.sockets.drain(..) {
                table.add(key, fd);
            }
        }
        self.inner
            .start_service(fds, shutdown, listeners_per_fd)
            .await
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn threads(&self) -> Option<usize> {
        self.inner.threads()
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        self.inner.listen_addresses()
    }
}
