//! The compiled route table: `(host, method, path)` → route and captures.
//! First match wins. Pure: no IO, no async, compiled once per config.

pub mod pattern;

use std::sync::Arc;

use http::Method;

use crate::config::{PathMatch, RouteSettings};

use self::pattern::{Captures, PathPattern};

#[derive(Debug)]
pub struct Router {
    routes: Vec<CompiledRoute>,
}

#[derive(Debug)]
struct CompiledRoute {
    settings: Arc<RouteSettings>,
    /// The route's name as a metric label.
    label: Arc<str>,
    host: Option<HostMatch>,
    path: PathRule,
}

#[derive(Debug)]
enum HostMatch {
    Exact(String),
    /// `*.example.com`: any subdomain (not the bare domain).
    Suffix(String),
}

#[derive(Debug)]
enum PathRule {
    Template(PathPattern),
    Prefix(String),
}

/// A matched route and the path captures.
#[derive(Debug)]
pub struct RouteMatch<'a> {
    pub route: &'a Arc<RouteSettings>,
    /// `route.name`, shared (the request metric's label).
    pub label: &'a Arc<str>,
    pub captures: Captures,
}

impl Router {
    pub fn new(routes: &[RouteSettings]) -> Self {
        let routes = routes
            .iter()
            .map(|r| CompiledRoute {
                settings: Arc::new(r.clone()),
                label: Arc::from(r.name.as_str()),
                host: r.host.as_ref().map(|h| match h.strip_prefix('*') {
                    Some(suffix) => HostMatch::Suffix(suffix.to_owned()),
                    None => HostMatch::Exact(h.clone()),
                }),
                path: match &r.path {
                    PathMatch::Template(t) => PathRule::Template(t.clone()),
                    PathMatch::Prefix(p) => PathRule::Prefix(p.clone()),
                },
            })
            .collect();
        Self { routes }
    }

    /// The first route matching the request. `host` may carry a port and
    /// any case; `path` is the URI path without the query.
    pub fn route(&self, host: Option<&str>, method: &Method, path: &str) -> Option<RouteMatch<'_>> {
        let host = host.map(without_port);
        for r in &self.routes {
            if let Some(want) = &r.host {
                let Some(host) = host else {
                    continue;
                };
                let ok = match want {
                    HostMatch::Exact(h) => host.eq_ignore_ascii_case(h),
                    HostMatch::Suffix(s) => {
                        host.len() > s.len()
                            && host.as_bytes()[host.len() - s.len()..]
                                .eq_ignore_ascii_case(s.as_bytes())
                    }
                };
                if !ok {
                    continue;
                }
            }
            if !r.settings.methods.is_empty() && !r.settings.methods.contains(method) {
                continue;
            }
            let captures = match &r.path {
                PathRule::Template(p) => match p.matches(path) {
                    Some(c) => c,
                    None => continue,
                },
                PathRule::Prefix(prefix) => {
                    if !prefix_matches(prefix, path) {
                        continue;
                    }
                    Vec::new()
                }
            };
            return Some(RouteMatch {
                route: &r.settings,
                label: &r.label,
                captures,
            });
        }
        None
    }
}

/// `/api` matches `/api`, `/api/` and `/api/x`, not `/apix`.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// The host without its port; routes compare it ignoring ASCII case.
fn without_port(host: &str) -> &str {
    if host.starts_with('[') {
        // [v6]:port
        host.split_once(']')
            .map_or(host, |(h, _)| h)
            .trim_start_matches('[')
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{self, RouteAction};
    use std::path::Path;

    fn router(yaml_routes: &str) -> Router {
        let text = format!(
            "listen: {{ http: [\"127.0.0.1:0\"] }}\nupstreams:\n  api: {{ targets: [\"http://127.0.0.1:1\"] }}\nroutes:\n{yaml_routes}"
        );
        let c = config::parse(Path::new("t.yaml"), &text, &|_| None).unwrap();
        Router::new(&c.routes)
    }

    fn name(r: &Router, host: Option<&str>, method: Method, path: &str) -> Option<String> {
        r.route(host, &method, path).map(|m| m.route.name.clone())
    }

    #[test]
    fn first_match_wins_with_templates_prefixes_hosts_and_methods() {
        let r = router(
            "  - { name: live, match: { path: \"/live/{ch}\" }, realtime: { channels: [\"{ch}\"] } }\n\
             \x20 - { name: admin, match: { host: \"admin.example.com\", path_prefix: / }, upstream: api }\n\
             \x20 - { name: sub, match: { host: \"*.example.com\", path_prefix: /x }, upstream: api }\n\
             \x20 - { name: posts, match: { path_prefix: /api, methods: [post] }, upstream: api }\n\
             \x20 - { name: rest, match: { path_prefix: / }, upstream: api }\n",
        );
        assert_eq!(
            name(&r, None, Method::GET, "/live/news").as_deref(),
            Some("live")
        );
        let m = r.route(None, &Method::GET, "/live/news").unwrap();
        assert_eq!(m.captures, vec![("ch".to_owned(), "news".to_owned())]);
        assert!(matches!(m.route.action, RouteAction::Realtime(_)));
        assert_eq!(
            name(&r, Some("Admin.Example.com:8080"), Method::GET, "/live/x").as_deref(),
            Some("live")
        );
        assert_eq!(
            name(&r, Some("Admin.Example.com:8080"), Method::GET, "/y").as_deref(),
            Some("admin")
        );
        assert_eq!(
            name(&r, Some("a.example.com"), Method::GET, "/x/1").as_deref(),
            Some("sub")
        );
        assert_eq!(
            name(&r, Some("example.com"), Method::GET, "/x/1").as_deref(),
            Some("rest")
        );
        assert_eq!(
            name(&r, None, Method::POST, "/api/v1").as_deref(),
            Some("posts")
        );
        assert_eq!(
            name(&r, None, Method::GET, "/api/v1").as_deref(),
            Some("rest")
        );
        assert_eq!(
            name(&r, None, Method::POST, "/apix").as_deref(),
            Some("rest")
        );
    }

    #[test]
    fn no_route_is_none() {
        let r = router("  - { name: a, match: { path_prefix: /a }, upstream: api }\n");
        assert!(r.route(None, &Method::GET, "/b").is_none());
    }

    #[test]
    fn prefix_rules() {
        assert!(prefix_matches("/", "/anything"));
        assert!(prefix_matches("/api", "/api"));
        assert!(prefix_matches("/api", "/api/x"));
        assert!(!prefix_matches("/api", "/apix"));
        assert!(prefix_matches("/api/", "/api/x"));
    }
}
