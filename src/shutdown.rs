//! The shared shutdown signal and task tracker, OS signal handling, the
//! drain deadline, and paced drain: long-lived connections take turns
//! spread over a window instead of all closing at once. This module does
//! not know what it drains.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

/// Cloned into every component: `token` is cancelled when draining starts;
/// `tracker` holds every long-lived task (connections, sessions).
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    pub token: CancellationToken,
    pub tracker: TaskTracker,
    pace: Arc<Mutex<Option<Pace>>>,
}

/// A paced drain's schedule: turn `k` of `total` closes at
/// `start + window * k / total`.
#[derive(Debug)]
struct Pace {
    start: Instant,
    window: Duration,
    total: usize,
    next: usize,
}

/// A connection's turn in a paced drain, taken once (the first time its
/// [`Shutdown::turn`] future sees the drain start) and kept.
pub type Turn = Option<Instant>;

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// A handle whose token can also be cancelled alone (one listener
    /// stopping), sharing this one's tracker.
    pub fn child(&self) -> Self {
        Self {
            token: self.token.child_token(),
            tracker: self.tracker.clone(),
            pace: self.pace.clone(),
        }
    }

    pub fn is_draining(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves when it is this connection's turn to close: at once when
    /// the drain is not paced, else at its slot in the window. Until then
    /// the connection keeps serving. `turn` keeps the slot when the future
    /// is recreated.
    ///
    /// An idle connection keeps this future: an `async` block (an `async
    /// fn` keeps its arguments twice), and its timer boxed, needed only
    /// once the drain starts.
    #[allow(clippy::manual_async_fn)] // see above: not an `async fn` on purpose
    pub fn turn<'a>(&'a self, turn: &'a mut Turn) -> impl Future<Output = ()> + Send + 'a {
        async move {
            self.token.cancelled().await;
            let at = *turn.get_or_insert_with(|| self.next_slot());
            if at > Instant::now() {
                Box::pin(tokio::time::sleep_until(at)).await;
            }
        }
    }

    fn next_slot(&self) -> Instant {
        let mut pace = self.pace.lock().unwrap_or_else(|e| e.into_inner());
        match pace.as_mut() {
            None => Instant::now(),
            Some(p) => {
                let k = p.next;
                p.next += 1;
                if k >= p.total {
                    // More than counted at the start: at the window's end.
                    p.start + p.window
                } else {
                    p.start + p.window.mul_f64(k as f64 / p.total as f64)
                }
            }
        }
    }

    /// Like [`drain`](Self::drain), but the `connections` open now take
    /// turns (see [`turn`](Self::turn)) spread evenly over `window`.
    pub async fn drain_paced(&self, grace: Duration, window: Duration, connections: usize) -> bool {
        if !window.is_zero() && connections > 1 {
            info!(connections, window = ?window, "Closing realtime connections spread over the drain window.");
            *self.pace.lock().unwrap_or_else(|e| e.into_inner()) = Some(Pace {
                start: Instant::now(),
                window,
                total: connections,
                next: 0,
            });
        }
        self.drain(grace).await
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

/// SIGHUPs, caught from now on. Call it before the listeners are bound:
/// until a handler is installed, SIGHUP's default action ends the
/// process. `None` where signals are not available.
#[cfg(unix)]
pub fn hangups() -> Option<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(error) => {
            warn!(%error, "Cannot listen for SIGHUP; reload with POST /admin/reload.");
            None
        }
    }
}

/// Runs `reload` on every SIGHUP caught by `hangups`, one at a time, for
/// the life of the process.
#[cfg(unix)]
pub fn on_hangup<F, Fut>(hangups: Option<tokio::signal::unix::Signal>, mut reload: F)
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let Some(mut hangups) = hangups else {
        return;
    };
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            info!("Received SIGHUP, reloading the config.");
            reload().await;
        }
    });
}
