//! WebSocket (SPEC §3.4) with fastwebsockets: one task per connection,
//! the JSON frame protocol, client publish, pings and close codes.
//!
//! The socket is split: fastwebsockets' `WebSocketRead` owns the read half
//! and its `read_frame` future lives across loop iterations (it is not
//! cancel-safe, so it is only dropped when the connection ends); the task
//! writes frames encoded by fastwebsockets (`Frame::write`) to the write
//! half itself. Server frames are unmasked, so a message's frame is the
//! same bytes for every subscriber: it is encoded once (`Message::encoded`)
//! and a burst goes out in one write.
//!
//! Fragmented messages are reassembled here with our own size cap.
//!
//! Close codes and reasons (SPEC §3.4) are [`EndReason`]'s
//! (`close_code`, `close_text`), shared with SSE and the webhooks.
//!
//! [`EndReason`]: crate::realtime::EndReason

mod connection;
mod encode;
mod handshake;
mod protocol;

pub use self::connection::{CLOSE_HANDSHAKE_TIMEOUT, close_code_allowed};
pub use self::encode::{message_frame, message_json};
pub use self::handshake::{accept_key, is_handshake, respond, serve_raw, upgrade};
pub use self::protocol::{ClientFrame, FrameError, parse_client_frame};

/// Cache slot of a message's encoded WebSocket frame in `Message`.
pub const ENCODING_SLOT: usize = 1;
/// A binary message's `?binary=frames` pair (the hub's last slot, which
/// only binary messages fill).
pub const FRAMES_SLOT: usize = 2;
