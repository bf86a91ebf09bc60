#![no_main]
//! The SSE / long-poll / WebSocket query string (`realtime::Query`) and
//! the transport negotiation that reads it.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let allowed = [
        pushgate::realtime::negotiate::Transport::Websocket,
        pushgate::realtime::negotiate::Transport::Sse,
        pushgate::realtime::negotiate::Transport::Longpoll,
    ];
    let headers = http::HeaderMap::new();
    let Ok(q) = std::str::from_utf8(data) else {
        return;
    };
    let query = pushgate::realtime::Query::parse(Some(q));
    let _ = query.all("channel").count();
    if let Some(since) = query.get("since") {
        let _ = pushgate::realtime::cursor::decode(since, 2);
    }
    let _ = pushgate::realtime::negotiate::choose(&headers, query.get("transport"), &allowed);
});
