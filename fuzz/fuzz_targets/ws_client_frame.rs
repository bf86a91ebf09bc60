#![no_main]
//! The WebSocket client-frame protocol's pure steps, as `handle_text`
//! takes them: the JSON frame, the channel name, the `since` id.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(frame) = pushgate::realtime::ws::parse_client_frame(text) else {
        return;
    };
    if let Some(channel) = frame.channel.as_deref() {
        let _ = pushgate::publish::channel(channel);
    }
    if let Some(since) = frame.since.as_deref() {
        let _ = pushgate::realtime::cursor::decode_one(since);
    }
    let _ =
        pushgate::publish::Content::validate(frame.data.as_ref(), frame.event.as_ref(), None, 1024);
});
