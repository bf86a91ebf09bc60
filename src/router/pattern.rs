//! The `{name}` template grammar, parsed once and used by `pushgate check`,
//! the router and the realtime session alike: path templates that capture
//! segments, channel templates rendered from captures, and `*` globs.
//! Pure and allocation-light.

/// Why a template is not valid; worded for `pushgate check`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("'}}' without '{{'")]
    UnopenedBrace,
    #[error("'{{' without '}}'")]
    UnclosedBrace,
    #[error("bad placeholder {{{0}}}: use letters, digits and _")]
    BadName(String),
    #[error("path segment {0:?} has more than one placeholder; a segment captures at most once")]
    SegmentCapturesTwice(String),
}

/// `(name, value)` pairs captured from a path, in template order.
pub type Captures = Vec<(String, String)>;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Placeholder(String),
}

/// A template such as `"user:{id}"`: literal text and `{name}` placeholders
/// (names of letters, digits and `_`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

impl Template {
    pub fn parse(source: &str) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = source;
        while let Some(at) = rest.find(['{', '}']) {
            if rest.as_bytes()[at] == b'}' {
                return Err(TemplateError::UnopenedBrace);
            }
            if at > 0 {
                parts.push(Part::Literal(rest[..at].to_owned()));
            }
            let after = &rest[at + 1..];
            let close = after.find('}').ok_or(TemplateError::UnclosedBrace)?;
            let name = &after[..close];
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(TemplateError::BadName(name.to_owned()));
            }
            parts.push(Part::Placeholder(name.to_owned()));
            rest = &after[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_owned()));
        }
        Ok(Self {
            source: source.to_owned(),
            parts,
        })
    }

    /// The text the template was parsed from.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The placeholder names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Placeholder(n) => Some(n.as_str()),
            Part::Literal(_) => None,
        })
    }

    /// The template with each placeholder replaced by its capture; `None`
    /// if a placeholder has no capture.
    pub fn render(&self, captures: &Captures) -> Option<String> {
        let mut out = String::with_capacity(self.source.len() + 16);
        for part in &self.parts {
            match part {
                Part::Literal(l) => out.push_str(l),
                Part::Placeholder(name) => {
                    let (_, value) = captures.iter().find(|(n, _)| n == name)?;
                    out.push_str(value);
                }
            }
        }
        Some(out)
    }

    /// The glob every rendering matches: `user:{id}` → `user:*`.
    pub fn to_glob(&self) -> String {
        let mut out = String::with_capacity(self.source.len());
        for part in &self.parts {
            match part {
                Part::Literal(l) => out.push_str(l),
                Part::Placeholder(_) => out.push('*'),
            }
        }
        out
    }
}

impl std::fmt::Display for Template {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.source)
    }
}

/// A compiled path template such as `/live/{channel}` or `/u/user-{id}`.
/// Each placeholder captures the rest of one segment between its literal
/// prefix and suffix; captures are percent-decoded. A segment holds at
/// most one placeholder: `{a}-{b}` has no single reading, so it is refused
/// when parsed rather than matching nothing at run time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    template: Template,
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

impl PathPattern {
    pub fn parse(source: &str) -> Result<Self, TemplateError> {
        let template = Template::parse(source)?;
        let mut segments = Vec::new();
        // Placeholder names hold no '/', so no placeholder spans segments.
        for s in source.trim_start_matches('/').split('/') {
            let segment = Template::parse(s)?;
            segments.push(match segment.parts.as_slice() {
                [] => Segment::Literal(String::new()),
                [Part::Literal(l)] => Segment::Literal(l.clone()),
                [Part::Placeholder(name)] => Segment::Capture {
                    prefix: String::new(),
                    name: name.clone(),
                    suffix: String::new(),
                },
                [Part::Literal(prefix), Part::Placeholder(name)] => Segment::Capture {
                    prefix: prefix.clone(),
                    name: name.clone(),
                    suffix: String::new(),
                },
                [Part::Placeholder(name), Part::Literal(suffix)] => Segment::Capture {
                    prefix: String::new(),
                    name: name.clone(),
                    suffix: suffix.clone(),
                },
                [
                    Part::Literal(prefix),
                    Part::Placeholder(name),
                    Part::Literal(suffix),
                ] => Segment::Capture {
                    prefix: prefix.clone(),
                    name: name.clone(),
                    suffix: suffix.clone(),
                },
                _ => return Err(TemplateError::SegmentCapturesTwice(s.to_owned())),
            });
        }
        Ok(Self { template, segments })
    }

    /// The placeholder names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.template.names()
    }

    pub fn as_str(&self) -> &str {
        self.template.as_str()
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
        let p = PathPattern::parse("/live/{channel}").unwrap();
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
        let p = PathPattern::parse("/u/user-{id}.json").unwrap();
        assert_eq!(
            p.matches("/u/user-7.json"),
            Some(vec![("id".into(), "7".into())])
        );
        assert_eq!(p.matches("/u/user-.json"), None);
        let literal = PathPattern::parse("/a/b").unwrap();
        assert_eq!(literal.matches("/a/b"), Some(vec![]));
        let capture = PathPattern::parse("/a/{x}").unwrap();
        assert_eq!(capture.matches("/a/%zz"), None);
    }

    #[test]
    fn renders_channel_templates() {
        let caps = vec![("id".to_owned(), "42".to_owned())];
        let render = |t: &str| Template::parse(t).unwrap().render(&caps);
        assert_eq!(render("user:{id}").as_deref(), Some("user:42"));
        assert_eq!(render("static").as_deref(), Some("static"));
        assert_eq!(render("{missing}"), None);
        assert_eq!(render("{id}{id}").as_deref(), Some("4242"));
    }

    #[test]
    fn templates_become_globs() {
        let glob = |t: &str| Template::parse(t).unwrap().to_glob();
        assert_eq!(glob("{channel}"), "*");
        assert_eq!(glob("user:{id}:feed"), "user:*:feed");
        assert_eq!(glob("static"), "static");
    }

    #[test]
    fn bad_templates_are_refused_with_the_reason() {
        let err = |t: &str| Template::parse(t).unwrap_err().to_string();
        assert_eq!(err("a}"), "'}' without '{'");
        assert_eq!(err("{a"), "'{' without '}'");
        assert_eq!(
            err("{a-b}"),
            "bad placeholder {a-b}: use letters, digits and _"
        );
        assert_eq!(err("{}"), "bad placeholder {}: use letters, digits and _");
    }

    /// Regression: `check` used to accept `/x/{a}-{b}`, which then matched
    /// nothing. Two placeholders in one segment are refused at parse time.
    #[test]
    fn two_placeholders_in_one_segment_are_refused() {
        for t in ["/x/{a}-{b}", "/x/{a}{b}", "/{a}.{b}.json"] {
            let e = PathPattern::parse(t).unwrap_err();
            assert!(
                matches!(e, TemplateError::SegmentCapturesTwice(_)),
                "{t}: {e}"
            );
        }
        assert!(PathPattern::parse("/x/{a}/{b}").is_ok());
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
            let _ = PathPattern::parse("/x/{a}/y-{b}").unwrap().matches(&path);
            let _ = percent_decode(&path);
            if let Ok(p) = PathPattern::parse(&path) {
                let _ = p.matches(&path);
            }
        }

        /// Everything `parse` accepts matches the paths it describes, and
        /// captures exactly the values that were put in.
        #[test]
        fn accepted_templates_match_their_paths(
            segments in proptest::collection::vec(
                (any::<bool>(), "[a-z0-9.-]{0,4}", "[a-z0-9.-]{0,4}", "[A-Za-z0-9_.:@-]{1,8}"),
                1..6,
            )
        ) {
            let mut template = String::new();
            let mut path = String::new();
            let mut want = Vec::new();
            for (i, (capture, prefix, suffix, value)) in segments.iter().enumerate() {
                template.push('/');
                path.push('/');
                if *capture {
                    template.push_str(&format!("{prefix}{{p{i}}}{suffix}"));
                    path.push_str(&format!("{prefix}{value}{suffix}"));
                    want.push((format!("p{i}"), value.clone()));
                } else {
                    let literal = format!("{prefix}{suffix}x");
                    template.push_str(&literal);
                    path.push_str(&literal);
                }
            }
            let pattern = PathPattern::parse(&template).unwrap();
            prop_assert_eq!(pattern.matches(&path), Some(want));
        }
    }
}
