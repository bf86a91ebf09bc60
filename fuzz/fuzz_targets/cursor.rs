#![no_main]
//! `realtime::cursor`: resume ids (`Last-Event-ID`, `since`), one channel
//! or many; a decoded id must encode back to an id that decodes the same.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(id) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(p) = pushgate::realtime::cursor::decode_one(id) {
        let again = pushgate::realtime::cursor::encode_one(p);
        assert_eq!(pushgate::realtime::cursor::decode_one(&again).ok(), Some(p));
    }
    for channels in [1, 2, 3, 7] {
        if let Ok(ps) = pushgate::realtime::cursor::decode(id, channels) {
            assert_eq!(ps.len(), channels);
            let again = pushgate::realtime::cursor::encode(&ps);
            assert_eq!(
                pushgate::realtime::cursor::decode(&again, channels).ok(),
                Some(ps)
            );
        }
    }
});
