//! Channel patterns of the `channels` and `publish` claims: exact names,
//! `*` within one `:`/`/` segment, `**` across segments.
//!
//! A pattern is compiled once (per token) into tokens; matching runs the
//! tokens as an NFA over a fixed 256-bit state set: linear in the channel's
//! length, no backtracking, no allocation.

/// Longest pattern accepted: a channel name is at most 200 bytes.
const MAX_PATTERN: usize = 250;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    Byte(u8),
    /// `*`: any run of bytes without `:` or `/`.
    Star,
    /// `**`: any run of bytes.
    Any,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Exact(Box<str>),
    Glob(Box<[Tok]>),
}

/// A compiled list of patterns; matches when any one does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PatternSet {
    patterns: Vec<Pattern>,
}

impl PatternSet {
    /// Compiles `patterns`, skipping invalid ones (they would match
    /// nothing anyway: a channel name cannot hold their bytes).
    pub fn compile<S: AsRef<str>>(patterns: &[S]) -> Self {
        Self {
            patterns: patterns
                .iter()
                .filter_map(|p| compile(p.as_ref()))
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    pub fn matches(&self, channel: &str) -> bool {
        self.patterns.iter().any(|p| match p {
            Pattern::Exact(e) => **e == *channel,
            Pattern::Glob(tokens) => glob(tokens, channel.as_bytes()),
        })
    }
}

fn valid_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"_.:@/-".contains(&b)
}

fn compile(p: &str) -> Option<Pattern> {
    let bytes = p.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_PATTERN {
        return None;
    }
    if !bytes.contains(&b'*') {
        return bytes
            .iter()
            .all(|&b| valid_byte(b))
            .then(|| Pattern::Exact(p.into()));
    }
    let mut tokens = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'*' if bytes.get(i + 1) == Some(&b'*') => {
                tokens.push(Tok::Any);
                i += 2;
            }
            b'*' => {
                tokens.push(Tok::Star);
                i += 1;
            }
            b if valid_byte(b) => {
                tokens.push(Tok::Byte(b));
                i += 1;
            }
            _ => return None,
        }
    }
    Some(Pattern::Glob(tokens.into()))
}

/// A set of NFA states (token positions 0..=255).
#[derive(Clone, Copy, PartialEq, Eq)]
struct States([u64; 4]);

impl States {
    const EMPTY: States = States([0; 4]);

    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }

    fn get(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }

    /// Wildcards may match nothing: a state on one also holds after it.
    fn close(&mut self, tokens: &[Tok]) {
        for (i, t) in tokens.iter().enumerate() {
            if self.get(i) && matches!(t, Tok::Star | Tok::Any) {
                self.set(i + 1);
            }
        }
    }
}

fn glob(tokens: &[Tok], s: &[u8]) -> bool {
    let mut states = States::EMPTY;
    states.set(0);
    states.close(tokens);
    for &c in s {
        let mut next = States::EMPTY;
        for (word, bits) in states.0.iter().enumerate() {
            let mut bits = *bits;
            while bits != 0 {
                let i = word * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                match tokens.get(i) {
                    Some(Tok::Byte(b)) if *b == c => next.set(i + 1),
                    Some(Tok::Star) if c != b':' && c != b'/' => next.set(i),
                    Some(Tok::Any) => next.set(i),
                    _ => {}
                }
            }
        }
        if next == States::EMPTY {
            return false;
        }
        next.close(tokens);
        states = next;
    }
    states.get(tokens.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, channel: &str) -> bool {
        PatternSet::compile(&[pattern]).matches(channel)
    }

    #[test]
    fn exact_star_and_double_star() {
        assert!(m("news", "news"));
        assert!(!m("news", "news2"));
        assert!(m("chat:*", "chat:lobby"));
        assert!(!m("chat:*", "chat:lobby:x"));
        assert!(!m("chat:*", "chat/lobby"));
        assert!(m("chat:**", "chat:lobby:x/y"));
        assert!(m("user/*/inbox", "user/42/inbox"));
        assert!(!m("user/*/inbox", "user/42/43/inbox"));
        assert!(m("user/**/inbox", "user/42/43/inbox"));
        assert!(m("**", "anything:at/all"));
        assert!(m("a*c", "abbbc"));
        assert!(m("a*c", "ac"));
        assert!(!m("a*c", "ab:c"));
        assert!(m("*:*", "a:b"));
        assert!(!m("*:*", "ab"));
    }

    #[test]
    fn invalid_patterns_match_nothing() {
        assert!(PatternSet::compile(&["a b", "", "x\"y*"]).is_empty());
        assert!(!PatternSet::compile(&["a b"]).matches("a b"));
    }

    #[test]
    fn many_stars_stay_linear() {
        let p = "*a".repeat(100);
        let s = "a".repeat(199) + "b";
        assert!(!m(&p, &s));
        assert!(m(&"*".repeat(120), &"x".repeat(200)));
    }

    proptest::proptest! {
        #[test]
        fn a_name_matches_itself_and_double_star(name in "[a-z:/]{1,40}") {
            proptest::prop_assert!(m(&name, &name));
            proptest::prop_assert!(m("**", &name));
        }
    }
}
