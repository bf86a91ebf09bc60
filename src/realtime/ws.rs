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

mod connection;
mod encode;
mod handshake;
mod protocol;

pub use self::connection::{CLOSE_HANDSHAKE_TIMEOUT, close_code_allowed};
pub use self::encode::{message_frame, message_json};
pub use self::handshake::{accept_key, is_handshake, respond, serve_raw, upgrade};
pub use self::protocol::{ClientFrame, parse_client_frame};

/// Cache slot of a message's encoded WebSocket frame in `Message`.
pub const ENCODING_SLOT: usize = 1;

/// Close codes (SPEC §3.4).
pub const CLOSE_SHUTDOWN: u16 = 1001;
pub const CLOSE_PROTOCOL: u16 = 1002;
pub const CLOSE_BAD_DATA: u16 = 1007;
pub const CLOSE_NOT_ALLOWED: u16 = 1008;
pub const CLOSE_TOO_BIG: u16 = 1009;
pub const CLOSE_LAGGED: u16 = 1013;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes_match_the_spec() {
        assert_eq!(
            [
                CLOSE_SHUTDOWN,
                CLOSE_PROTOCOL,
                CLOSE_BAD_DATA,
                CLOSE_NOT_ALLOWED,
                CLOSE_TOO_BIG,
                CLOSE_LAGGED
            ],
            [1001, 1002, 1007, 1008, 1009, 1013]
        );
    }
}
