//! Path patterns with `{name}` captures, channel-name templates rendered
//! from captures, and `*` glob patterns. Pure and allocation-light.

/// A compiled path template such as `/live/{channel}` or `/u/user-{id}`.
/// Each placeholder captures the rest of one segment between its literal
/// prefix and suffix; captures are percent-decoded.
#[derive(Debug, Clone)]
pub struct PathPattern {
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Capture {
        prefix: String,
        name: String,
        suffix: String,
    },
}

/// `(name, value)` pairs captured from a path, in template order.
pub type Captures = Vec<(String, String)>;

impl PathPattern {
    /// Compiles a template already checked by `config::check_template`.
    /// A segment with more than one placeholder keeps only the first.
    pub fn new(template: &str) -> Self {
        let segments = template
            .trim_start_matches('/')
            .split('/')
            .map(|s| match (s.find('{'), s.find('}')) {
                (Some(open), Some(close)) if open < close => Segment::Capture {
                    prefix: s[..open].to_owned(),
                    name: s[open + 1..close].to_owned(),
                    suffix: s[close + 1..].to_owned(),
                },
                _ => Segment::Literal(s.to_owned()),
            })
            .collect();
        Self { segments }
    }

    /// Matches a request path (without query); returns the captures.
    pub fn matches(&self, path: &str) -> Option<Captures> {
        let mut captures = Vec::new();
        let mut parts = path.strip_prefix('/')?.split('/');
        for segment in &self.segments {
            let part = parts.next()?;
            match segment {
                Segment::Literal(l) => {
                    if part != l {
                        return None;
                    }
                }
                Segment::Capture {
                    prefix,
                    name,
                    suffix,
                } => {
                    let value = part
                        .strip_prefix(prefix.as_str())?
                        .strip_suffix(suffix.as_str())?;
                    if value.is_empty() {
                        return None;
                    }
                    captures.push((name.clone(), percent_decode(value)?));
                }
            }
        }
        match parts.next() {
            None => Some(captures),
            Some(_) => None,
        }
    }
}

/// Renders a channel template (`"user:{id}"`) with `captures`. Returns
/// `None` if a placeholder has no capture.
pub fn render(template: &str, captures: &Captures) -> Option<String> {
    let mut out = String::with_capacity(template.len() + 16);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after.find('}')?;
        let name = &after[..close];
        let (_, value) = captures.iter().find(|(n, _)| n == name)?;
        out.push_str(value);
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    Some(out)
}

/// Whether `text` matches `pattern`, where `*` matches any run of
/// characters (including none) and everything else is literal.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

/// Decodes `%XX` escapes; `None` for a malformed escape or invalid UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_owned());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn captures_whole_and_partial_segments() {
        let p = PathPattern::new("/live/{channel}");
        assert_eq!(
            p.matches("/live/news"),
            Some(vec![("channel".into(), "news".into())])
        );
        assert_eq!(
            p.matches("/live/a%3Ab"),
            Some(vec![("channel".into(), "a:b".into())])
        );
        assert_eq!(p.matches("/live/"), None);
        assert_eq!(p.matches("/live/a/b"), None);
        assert_eq!(p.matches("/other/a"), None);
        let p = PathPattern::new("/u/user-{id}.json");
        assert_eq!(
            p.matches("/u/user-7.json"),
            Some(vec![("id".into(), "7".into())])
        );
        assert_eq!(p.matches("/u/user-.json"), None);
        assert_eq!(PathPattern::new("/a/b").matches("/a/b"), Some(vec![]));
        assert_eq!(PathPattern::new("/a/{x}").matches("/a/%zz"), None);
    }

    #[test]
    fn renders_channel_templates() {
        let caps = vec![("id".to_owned(), "42".to_owned())];
        assert_eq!(render("user:{id}", &caps).as_deref(), Some("user:42"));
        assert_eq!(render("static", &caps).as_deref(), Some("static"));
        assert_eq!(render("{missing}", &caps), None);
    }

    #[test]
    fn globs() {
        assert!(glob("chat:*", "chat:room1"));
        assert!(glob("*", ""));
        assert!(glob("a*b*c", "aXbYc"));
        assert!(!glob("chat:*", "news"));
        assert!(glob("exact", "exact"));
        assert!(!glob("exact", "exact2"));
    }

    proptest! {
        #[test]
        fn matching_never_panics(path in "\\PC*") {
            let _ = PathPattern::new("/x/{a}/y-{b}").matches(&path);
            let _ = percent_decode(&path);
        }
    }
}
