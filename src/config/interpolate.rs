//! `${VAR}` and `${VAR:-default}` replacement in the config text, before
//! YAML parsing. `$${` stands for a literal `${`. Line numbers are kept.

use super::Position;

/// Replaces every `${...}` in `text` through `env`. An unset variable
/// without a default is an error at its position.
pub(super) fn interpolate(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, (Position, String)> {
    if !text.contains("${") {
        return Ok(text.to_owned());
    }
    let mut out = String::with_capacity(text.len());
    for (index, whole) in text.split_inclusive('\n').enumerate() {
        // Comments are copied as they are: `${...}` there is documentation.
        let (line, comment) = whole.split_at(comment_start(whole));
        let mut rest = line;
        let mut column = 1;
        while let Some(at) = rest.find("${") {
            if at > 0 && rest.as_bytes()[at - 1] == b'$' {
                // `$${` → literal `${`.
                out.push_str(&rest[..at - 1]);
                out.push_str("${");
                column += rest[..at + 2].chars().count();
                rest = &rest[at + 2..];
                continue;
            }
            out.push_str(&rest[..at]);
            let here = Position {
                line: index as u64 + 1,
                column: (column + rest[..at].chars().count()) as u64,
            };
            let body = &rest[at + 2..];
            let Some(close) = body.find('}') else {
                return Err((here, "unterminated ${ in config".into()));
            };
            let expr = &body[..close];
            let (name, default) = match expr.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (expr, None),
            };
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err((here, format!("invalid variable name {name:?} in ${{...}}")));
            }
            match (env(name), default) {
                (Some(value), _) => out.push_str(&value),
                (None, Some(default)) => out.push_str(default),
                (None, None) => {
                    return Err((
                        here,
                        format!(
                            "environment variable {name} is not set (use ${{{name}:-default}})"
                        ),
                    ));
                }
            }
            column += rest[..at + 2 + close + 1].chars().count();
            rest = &body[close + 1..];
        }
        out.push_str(rest);
        out.push_str(comment);
    }
    Ok(out)
}

/// Byte offset where a YAML comment starts on `line` (its length if none):
/// a `#` at the start or after white space, outside quotes.
fn comment_start(line: &str) -> usize {
    let mut quote: Option<char> = None;
    let mut previous = ' ';
    for (i, c) in line.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == '#' && previous.is_whitespace() => return i,
            None => {}
        }
        previous = c;
    }
    line.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "A").then(|| "x".to_owned())
    }

    #[test]
    fn replaces_escapes_and_defaults() {
        assert_eq!(
            interpolate("a: ${A}\nb: ${B:-d}\nc: $${A}\n", &env).unwrap(),
            "a: x\nb: d\nc: ${A}\n"
        );
        assert_eq!(interpolate("k: '${B:-}'", &env).unwrap(), "k: ''");
    }

    #[test]
    fn comments_are_left_alone() {
        assert_eq!(
            interpolate("a: ${A} # ${NOPE}\n# ${NOPE}\nb: \"#${A}\"\n", &env).unwrap(),
            "a: x # ${NOPE}\n# ${NOPE}\nb: \"#x\"\n"
        );
    }

    #[test]
    fn reports_position_of_missing_variable() {
        let (at, msg) = interpolate("a: 1\nb: x ${MISSING}\n", &env).unwrap_err();
        assert_eq!((at.line, at.column), (2, 6));
        assert!(msg.contains("MISSING"));
        assert!(interpolate("a: ${A", &env).is_err());
        assert!(interpolate("a: ${A-B}", &env).is_err());
    }
}
