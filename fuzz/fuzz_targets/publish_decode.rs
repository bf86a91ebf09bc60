#![no_main]
//! `publish::decode`: the `/publish` body (single, multi-channel, batch).

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = pushgate::publish::decode(data, 1024);
});
