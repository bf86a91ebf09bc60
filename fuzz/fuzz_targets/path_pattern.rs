//! The router's path templates and matcher (`router::pattern`): input is
//! `template \n path \n glob`.
fn main() {
    let dict: &[&[u8]] = &[
        b"/", b"{", b"}", b"{a}", b"{b}", b"{a}{b}", b"*", b"**", b"%", b"%2F", b"..", b"\n",
        b"//", b"?", b"#",
    ];
    use pushgate::router::pattern;
    pushgate_fuzz::run("path_pattern", dict, 1024, |data| {
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
}
