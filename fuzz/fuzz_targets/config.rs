//! `config::parse`: the YAML loader (serde-saphyr, `${VAR}` interpolation)
//! and every semantic check.
fn main() {
    let dict: &[&[u8]] = &[
        b"listen:",
        b"routes:",
        b"upstreams:",
        b"realtime:",
        b"limits:",
        b"internal:",
        b"match:",
        b"path:",
        b"path_prefix:",
        b"host:",
        b"channels:",
        b"{channel}",
        b"*",
        b"${X}",
        b"${X:-d}",
        b"$",
        b"${",
        b"1KiB",
        b"10s",
        b"1ms",
        b"0",
        b"- ",
        b": ",
        b"\n  ",
        b"[",
        b"]",
        b"{",
        b"}",
        b"&a",
        b"*a",
        b"!!str",
        b"---",
        b"'",
        b"\"",
        b"#",
        b"on_lag: drop_oldest",
        b"client_publish: true",
        b"query_channels: true",
    ];
    let path = std::path::Path::new("/fuzz/pushgate.yaml");
    pushgate_fuzz::run("config", dict, 8192, |data| {
        if let Ok(text) = std::str::from_utf8(data) {
            let env = |name: &str| (name == "X").then(|| "x".to_owned());
            let _ = pushgate::config::parse(path, text, &env);
        }
    });
}
