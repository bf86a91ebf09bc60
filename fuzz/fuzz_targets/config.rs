#![no_main]
//! `config::parse`: the YAML loader (serde-saphyr, `${VAR}` interpolation)
//! and every semantic check.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let path = std::path::Path::new("/fuzz/pushgate.yaml");
    if let Ok(text) = std::str::from_utf8(data) {
        let env = |name: &str| (name == "X").then(|| "x".to_owned());
        let _ = pushgate::config::parse(path, text, &env);
    }
});
