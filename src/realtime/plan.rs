//! A realtime request once checked: the [`Plan`] a transport opens.

use http::Response;

use crate::auth::Access;
use crate::config::RealtimeSettings;
use crate::error::Body;
use crate::hub::message::{ChannelName, Position};
use crate::limits::ConnPermit;
use crate::realtime::negotiate::Transport;

use super::Grants;

/// A realtime request, validated and ready to become a session.
pub struct Plan {
    pub transport: Transport,
    pub channels: Vec<ChannelName>,
    pub since: Option<Vec<Position>>,
    pub grants: Grants,
    pub settings: RealtimeSettings,
    /// Where the request stands with the route's auth.
    pub access: Access,
    /// The request's share of the per-address connection cap.
    pub permit: Option<ConnPermit>,
    /// WebSocket `?binary=frames`: a binary message as a header frame and
    /// a binary frame (default `base64`: `data_base64` in the JSON frame).
    pub binary_frames: bool,
    /// WebSocket `?publish=C`: where the client's binary messages go.
    pub publish_to: Option<ChannelName>,
}

/// What a realtime request asks for.
// Short-lived and moved once or twice per request: boxing buys nothing.
#[allow(clippy::large_enum_variant)]
pub enum Prepared {
    /// `?transport=info`.
    Info(Response<Body>),
    Session(Plan),
}
