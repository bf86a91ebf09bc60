//! A realtime request's query string (`?channel=`, `?since=`, ...).

use crate::router::pattern;

/// A request's parsed query string.
#[derive(Debug, Default)]
pub struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    pub fn parse(query: Option<&str>) -> Self {
        let pairs = query
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .filter_map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                let decode = |s: &str| pattern::percent_decode(&s.replace('+', " "));
                Some((decode(k)?, decode(v)?))
            })
            .collect();
        Self { pairs }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.pairs
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing_decodes_and_repeats() {
        let q = Query::parse(Some("channel=a&channel=b%3Ac&since=1-2&x=a+b&bad=%zz"));
        assert_eq!(q.all("channel").collect::<Vec<_>>(), ["a", "b:c"]);
        assert_eq!(q.get("since"), Some("1-2"));
        assert_eq!(q.get("x"), Some("a b"));
        assert_eq!(q.get("bad"), None);
    }
}
