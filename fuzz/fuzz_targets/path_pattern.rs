#![no_main]
//! The router's path templates and matcher (`router::pattern`): input is
//! `template \n path \n glob`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    use pushgate::router::pattern;
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.splitn(3, '\n');
    let (template, path, glob) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    if let Ok(p) = pattern::PathPattern::parse(template)
        && let Some(captures) = p.matches(path)
    {
        let _ = p.names().count();
        if let Ok(t) = pattern::Template::parse(glob) {
            let _ = t.render(&captures);
            let _ = t.to_glob();
        }
    }
    if let Ok(t) = pattern::Template::parse(template) {
        let g = t.to_glob();
        let _ = pattern::glob(&g, path);
    }
    let _ = pattern::glob(glob, path);
    let _ = pattern::percent_decode(path);
});
