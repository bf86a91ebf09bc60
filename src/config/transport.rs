//! The realtime transports a route offers (`realtime.transports`): the
//! vocabulary config, auth, presence, metrics and the transports share.

/// A realtime transport; the config names them in lowercase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Websocket,
    Sse,
    Longpoll,
}

impl Transport {
    /// Every transport: `pushgate_sessions` exports each from the start.
    pub const ALL: [Transport; 3] = [Transport::Websocket, Transport::Sse, Transport::Longpoll];

    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Websocket => "websocket",
            Transport::Sse => "sse",
            Transport::Longpoll => "longpoll",
        }
    }
}
