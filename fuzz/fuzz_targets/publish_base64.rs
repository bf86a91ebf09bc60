#![no_main]
//! `publish::binary::decode`: `data_base64` (SPEC §12). Whatever it takes
//! must round-trip: the bytes it returns, encoded again (padded), decode to
//! the same bytes; whatever it refuses names a position inside the text.

use base64::Engine as _;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match pushgate::publish::binary::decode(text) {
        Ok(bytes) => {
            let again = base64::engine::general_purpose::STANDARD.encode(&bytes);
            assert_eq!(pushgate::publish::binary::decode(&again).unwrap(), bytes);
            assert_eq!(again.trim_end_matches('='), text.trim_end_matches('='));
        }
        Err(e) => assert!(e.position <= text.len()),
    }
});
