//! How Gatehouse stops. SIGTERM and SIGINT both drain: `/ready` turns 503, the listeners stop
//! accepting, in-flight requests finish, and the process exits as soon as none is left or when
//! `server.shutdown_grace` runs out, whichever comes first. (pingora alone would treat SIGINT
//! as a fast stop and always sleep the whole grace period.)

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::{ExecutionPhase, ShutdownSignal, ShutdownSignalWatch};
use tokio::sync::watch;

use crate::health::Readiness;
use crate::metrics::Metrics;

/// Waits for SIGTERM, SIGINT or SIGQUIT.
pub struct OsSignals {
    pub readiness: Arc<Readiness>,
    /// Whether systemd was told READY=1 (once, after the signal handlers are in place).
    pub announced: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl ShutdownSignalWatch for OsSignals {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        // Every handler is installed before systemd hears READY=1: a SIGTERM right after it
        // drains instead of killing the process by the signal's default action. A signal that
        // cannot be watched is logged and never fires; the others still work.
        let mut streams = Vec::new();
        for kind in [
            SignalKind::terminate(),
            SignalKind::interrupt(),
            SignalKind::quit(),
        ] {
            match signal(kind) {
                Ok(stream) => streams.push(stream),
                Err(e) => tracing::error!(error = %e, "cannot listen for a shutdown signal"),
            }
        }
        if !self
            .announced
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            // Every listener is bound and the store is open (both in `prepare`); connections
            // that arrive before pingora accepts wait in the backlog.
            notify_systemd(sd_notify::NotifyState::Ready);
        }
        std::future::poll_fn(|cx| {
            for stream in &mut streams {
                if stream.poll_recv(cx).is_ready() {
                    return std::task::Poll::Ready(());
                }
            }
            std::task::Poll::Pending
        })
        .await;
        self.readiness.set_draining();
        notify_systemd(sd_notify::NotifyState::Stopping);
        tracing::info!("shutdown signal received: draining");
        ShutdownSignal::GracefulTerminate
    }
}

/// What a [`Manual`] trigger asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Keep serving.
    Run,
    /// Drain like SIGTERM: `/ready` turns 503, requests in flight get the grace period.
    Drain,
    /// Stop at once: no grace period (an in-process server that is dropped).
    Now,
}

/// A shutdown trigger for Gatehouse run inside another program (the tests).
pub struct Manual {
    pub stop: watch::Receiver<Stop>,
    pub readiness: Arc<Readiness>,
}

#[async_trait]
impl ShutdownSignalWatch for Manual {
    async fn recv(&self) -> ShutdownSignal {
        let mut stop = self.stop.clone();
        // An error means the sender is gone: nobody can stop us any more, so run on.
        let Ok(asked) = stop.wait_for(|s| *s != Stop::Run).await.map(|s| *s) else {
            return std::future::pending().await;
        };
        self.readiness.set_draining();
        match asked {
            Stop::Now => ShutdownSignal::FastShutdown,
            Stop::Run | Stop::Drain => ShutdownSignal::GracefulTerminate,
        }
    }
}

/// Ends the process as soon as the grace period has begun and no request is in flight.
/// Runs on its own thread; only for the real binary, never inside tests.
pub fn exit_when_drained(
    mut phases: tokio::sync::broadcast::Receiver<ExecutionPhase>,
    metrics: Arc<Metrics>,
) {
    std::thread::spawn(move || loop {
        match phases.blocking_recv() {
            Ok(ExecutionPhase::ShutdownGracePeriod) => {
                let mut quiet_polls = 0;
                while quiet_polls < 2 {
                    std::thread::sleep(Duration::from_millis(25));
                    quiet_polls = if metrics.in_flight() == 0 {
                        quiet_polls + 1
                    } else {
                        0
                    };
                }
                tracing::info!("all requests finished: exiting");
                std::process::exit(0);
            }
            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(_) => return,
        }
    });
}

/// Tells systemd (`Type=notify`, `NOTIFY_SOCKET` set) a state change; nothing without
/// systemd. A failure is logged: the unit then times out, which names the problem.
pub fn notify_systemd(state: sd_notify::NotifyState) {
    if let Err(e) = sd_notify::notify(&[state]) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}
