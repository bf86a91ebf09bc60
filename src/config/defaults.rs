//! Every default a config file may leave out, in one place (documented in
//! docs/configuration.md). The `auth` and `backplane` sections keep theirs
//! next to their own schema.

use std::net::SocketAddr;
use std::time::Duration;

use super::{Limits, RealtimeSettings};
use crate::config::Transport;
use crate::hub::queue::LagPolicy;

/// `shutdown_grace`; `drain_window` defaults to half of it.
pub(super) const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// `upstreams.*.connect_timeout`.
pub(super) const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// `upstreams.*.timeout`.
pub(super) const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);
/// `upstreams.*.fail_timeout`.
pub(super) const UPSTREAM_FAIL_TIMEOUT: Duration = Duration::from_secs(10);

/// `internal.listen`.
pub(super) fn default_internal() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 5561))
}

/// A realtime route's `transports`: all of them.
pub(super) fn transports() -> Vec<Transport> {
    vec![Transport::Websocket, Transport::Sse, Transport::Longpoll]
}

/// The top-level `realtime` block's defaults; routes inherit from it.
impl Default for RealtimeSettings {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(15),
            pong_timeout: Duration::from_secs(30),
            longpoll_timeout: Duration::from_secs(30),
            sse_retry: Duration::from_secs(2),
            queue: 1024,
            on_lag: LagPolicy::Disconnect,
            history_messages: 1000,
            history_max_age: Duration::from_secs(600),
            history_max_total: crate::hub::budget::DEFAULT_MAX_TOTAL,
            max_message: 1 << 20,
            presence: super::PresenceSettings::default(),
        }
    }
}

/// The default `limits.max_body`: room for the base64 of a
/// `max_message`-sized binary payload (`data_base64`, 4/3 of it) and 64 KiB
/// of JSON around it; at least 1 MiB. 1,463,640 bytes for the default
/// 1 MiB `max_message`.
pub(super) fn max_body(max_message: usize) -> usize {
    (max_message.div_ceil(3).saturating_mul(4))
        .saturating_add(64 << 10)
        .max(1 << 20)
}

/// `limits`.
impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 100_000,
            max_header: 16 << 10,
            max_body: max_body(RealtimeSettings::default().max_message),
            header_read_timeout: Duration::from_secs(10),
        }
    }
}
