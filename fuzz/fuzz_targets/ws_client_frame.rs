#![no_main]
//! The WebSocket client-frame protocol's pure steps, as the connection
//! takes them: the JSON frame with its type and channel, then the `since`
//! id of a subscribe and the content of a publish.

use pushgate::realtime::ws::ClientFrame;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(frame) = pushgate::realtime::ws::parse_client_frame(text) else {
        return;
    };
    match frame {
        ClientFrame::Subscribe {
            since: Some(since), ..
        } => {
            let _ = pushgate::realtime::cursor::decode_one(&since);
        }
        ClientFrame::Publish { data, event, .. } => {
            let _ = pushgate::publish::Content::validate(data.as_ref(), event.as_ref(), None, 1024);
        }
        _ => {}
    }
});
