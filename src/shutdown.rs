//! The shared shutdown signal and task tracker, OS signal handling, and the
//! drain deadline. This module does not know what it drains.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

/// Cloned into every component: `token` is cancelled when draining starts;
/// `tracker` holds every long-lived task (connections, sessions).
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    pub token: CancellationToken,
    pub tracker: TaskTracker,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_draining(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Starts draining and waits up to `grace` for tracked tasks. Returns
    /// whether everything finished in time.
    pub async fn drain(&self, grace: Duration) -> bool {
        self.token.cancel();
        self.tracker.close();
        match tokio::time::timeout(grace, self.tracker.wait()).await {
            Ok(()) => {
                info!("Shutdown completed gracefully.");
                true
            }
            Err(_) => {
                warn!(
                    remaining = self.tracker.len(),
                    "Graceful shutdown did not complete in {grace:?}, terminating now."
                );
                false
            }
        }
    }
}

/// Resolves on the first SIGTERM or SIGINT (Ctrl-C).
pub async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(error) => {
                warn!(%error, "Cannot listen for SIGTERM; only Ctrl-C stops pushgate.");
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => info!("Received SIGTERM, draining."),
            _ = tokio::signal::ctrl_c() => info!("Received SIGINT, draining."),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        info!("Received Ctrl-C, draining.");
    }
}

/// Runs `reload` on every SIGHUP, one at a time, for the life of the
/// process.
pub fn on_hangup<F, Fut>(mut reload: F)
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(error) => {
                warn!(%error, "Cannot listen for SIGHUP; reload with POST /admin/reload.");
                return;
            }
        };
        while hangup.recv().await.is_some() {
            info!("Received SIGHUP, reloading the config.");
            reload().await;
        }
    });
    #[cfg(not(unix))]
    let _ = &mut reload;
}
