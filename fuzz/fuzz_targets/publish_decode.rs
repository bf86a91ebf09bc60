//! `publish::decode`: the `/publish` body (single, multi-channel, batch).
fn main() {
    let dict: &[&[u8]] = &[
        b"{",
        b"}",
        b"[",
        b"]",
        b",",
        b":",
        b"\"channel\"",
        b"\"channels\"",
        b"\"data\"",
        b"\"event\"",
        b"\"messages\"",
        b"\"idempotency_key\"",
        b"null",
        b"true",
        b"1e999",
        b"\"\\u0000\"",
        b"\"\\ud800\"",
    ];
    pushgate_fuzz::run("publish_decode", dict, 16384, |data| {
        let _ = pushgate::publish::decode(data, 1024);
    });
}
