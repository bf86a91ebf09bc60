//! Turns the parsed [`FileConfig`] into a typed [`Config`]: cross-field
//! checks, one diagnostic per problem at its `file:line:column`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method, Uri};
use serde_saphyr::Spanned;

use super::defaults::{self, default_internal};
use super::schema::{
    ClientPublishConfig, FileConfig, InternalConfig, LimitsConfig, ListenConfig, RealtimeBlock,
    RouteConfig, TlsConfig, UpstreamConfig,
};
use super::{
    CertificatePaths, ClientPublish, Config, Diagnostic, DurationValue, Error, InternalSettings,
    Limits, PathMatch, Position, RealtimeRoute, RealtimeSettings, RouteAction, RouteSettings,
    StaticSettings, UpstreamSettings,
};
use crate::router::pattern::{PathPattern, Template};

pub(super) struct Validator<'a> {
    path: &'a Path,
    base: PathBuf,
    errors: Vec<Diagnostic>,
    /// `realtime.allowed_origins` at the top level, the routes' default.
    allowed_origins: Option<std::sync::Arc<[String]>>,
}

impl<'a> Validator<'a> {
    pub(super) fn new(path: &'a Path) -> Self {
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Self {
            path,
            base,
            errors: Vec::new(),
            allowed_origins: None,
        }
    }

    pub(super) fn error(&mut self, at: impl Into<Position>, message: impl Into<String>) {
        self.errors.push(Diagnostic {
            file: self.path.display().to_string(),
            at: at.into(),
            message: message.into(),
        });
    }

    pub(super) fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    pub(super) fn address(&mut self, s: &Spanned<String>) -> Option<SocketAddr> {
        match s.value.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.error(
                    s,
                    format!(
                        "invalid listen address {:?}: expected IP:PORT, such as \"0.0.0.0:8080\"",
                        s.value
                    ),
                );
                None
            }
        }
    }

    /// Checks every section in file order (so diagnostics come in the
    /// order of the file), then the whole.
    pub(super) fn validate(mut self, file: FileConfig) -> Result<Config, Error> {
        let listen_http = self.addresses(&file.listen.http);
        let listen_https = self.addresses(&file.listen.https);
        let certificates = self.certificates(&file.listen, file.tls.as_ref());
        let internal = self.internal(file.internal.as_ref());
        let upstreams = self.upstreams(&file.upstreams);
        let realtime = resolve_realtime(RealtimeSettings::default(), &file.realtime);
        let routes = self.routes(&file.routes, &file.realtime, &upstreams, &realtime);
        let limits = self.limits(&file.limits, super::largest_max_message(&routes, &realtime));
        let rate_limits = self.rate_limits(&file.limits);
        let backplane = self.backplane(&file.backplane);
        let shutdown_grace = file
            .shutdown_grace
            .map_or(defaults::SHUTDOWN_GRACE, |d| d.0);
        let drain_window = self.drain_window(file.drain_window.as_ref(), shutdown_grace);
        let presence = self.presence_top(&file.presence);
        let hooks = self.hooks(&file.hooks, &upstreams);
        let tracing = self.tracing(&file.tracing);

        if self.errors.is_empty() && listen_http.is_empty() && listen_https.is_empty() {
            self.error(
                Position { line: 1, column: 1 },
                "no public listener: set listen.http or listen.https",
            );
        }

        if !self.errors.is_empty() {
            return Err(Error(self.errors));
        }
        Ok(Config {
            source: self.path.to_path_buf(),
            listen_http,
            listen_https,
            certificates,
            internal,
            upstreams,
            routes,
            realtime,
            limits,
            rate_limits,
            backplane,
            shutdown_grace,
            drain_window,
            presence,
            hooks,
            tracing,
        })
    }

    /// `listen.http` / `listen.https`.
    fn addresses(&mut self, list: &[Spanned<String>]) -> Vec<SocketAddr> {
        list.iter().filter_map(|a| self.address(a)).collect()
    }

    /// `tls.certificates`: the files must exist; `listen.https` needs one.
    fn certificates(
        &mut self,
        listen: &ListenConfig,
        tls: Option<&TlsConfig>,
    ) -> Vec<CertificatePaths> {
        let mut certificates = Vec::new();
        for c in tls.iter().flat_map(|t| &t.certificates) {
            for p in [&c.cert, &c.key] {
                if !self.resolve(&p.value).is_file() {
                    self.error(p, format!("certificate file {:?} not found", p.value));
                }
            }
            certificates.push(CertificatePaths {
                cert: self.resolve(&c.cert.value),
                key: self.resolve(&c.key.value),
                at: (&c.cert).into(),
            });
        }
        if !listen.https.is_empty() && certificates.is_empty() {
            self.error(
                &listen.https[0],
                "listen.https needs at least one entry in tls.certificates",
            );
        }
        certificates
    }

    /// `internal`: the publish API is loopback-only unless it has tokens.
    fn internal(&mut self, internal: Option<&InternalConfig>) -> InternalSettings {
        let Some(i) = internal else {
            return InternalSettings {
                listen: default_internal(),
                tokens: Vec::new(),
            };
        };
        let listen = self.address(&i.listen);
        // An empty token (an unset `${VAR:-}`) means no token.
        let tokens: Vec<String> = i.tokens.iter().filter(|t| !t.is_empty()).cloned().collect();
        if let Some(a) = listen
            && tokens.is_empty()
            && !a.ip().is_loopback()
        {
            self.error(
                &i.listen,
                format!(
                    "internal.listen {a} is not a loopback address and internal.tokens is empty: \
                 the publish API would be open to the network; add a token or listen on 127.0.0.1"
                ),
            );
        }
        InternalSettings {
            listen: listen.unwrap_or_else(default_internal),
            tokens,
        }
    }

    /// `upstreams`: http:// targets, timeouts, the `Grip-Sig` key.
    fn upstreams(
        &mut self,
        file: &BTreeMap<String, Spanned<UpstreamConfig>>,
    ) -> BTreeMap<String, UpstreamSettings> {
        let mut upstreams = BTreeMap::new();
        for (name, u) in file {
            let mut targets = Vec::new();
            if u.value.targets.is_empty() {
                self.error(u, format!("upstream {name:?} has no targets"));
            }
            for t in &u.value.targets {
                match t.value.parse::<Uri>() {
                    Ok(uri)
                        if uri.scheme_str() == Some("http")
                            && uri.authority().is_some()
                            && matches!(uri.path(), "" | "/") =>
                    {
                        targets.push(uri)
                    }
                    Ok(uri) if uri.scheme_str() == Some("https") => {
                        self.error(t, format!("upstream target {uri}: https upstreams are not supported yet; use http://"));
                    }
                    _ => self.error(
                        t,
                        format!(
                            "invalid upstream target {:?}: expected http://HOST:PORT",
                            t.value
                        ),
                    ),
                }
            }
            let u = &u.value;
            upstreams.insert(
                name.clone(),
                UpstreamSettings {
                    targets,
                    connect_timeout: u
                        .connect_timeout
                        .map_or(defaults::UPSTREAM_CONNECT_TIMEOUT, |d| d.0),
                    timeout: u.timeout.map_or(defaults::UPSTREAM_TIMEOUT, |d| d.0),
                    fail_timeout: u
                        .fail_timeout
                        .map_or(defaults::UPSTREAM_FAIL_TIMEOUT, |d| d.0),
                    grip_sig_key: u.grip_sig_key.as_ref().map(|k| {
                        if k.value.is_empty() {
                            self.error(k, "grip_sig_key must not be empty");
                        }
                        k.value.clone()
                    }),
                },
            );
        }
        upstreams
    }

    /// `routes`, after the top-level `realtime` block they inherit from.
    fn routes(
        &mut self,
        file: &[Spanned<RouteConfig>],
        top: &RealtimeBlock,
        upstreams: &BTreeMap<String, UpstreamSettings>,
        realtime: &RealtimeSettings,
    ) -> Vec<RouteSettings> {
        self.top_level_realtime(top);
        self.top_level_presence(&top.presence);
        self.allowed_origins = top.allowed_origins.clone().map(Into::into);
        let mut names = BTreeSet::new();
        let mut routes = Vec::new();
        for r in file {
            if let Some(route) = self.route(r, upstreams, realtime, &mut names) {
                routes.push(route);
            }
        }
        routes
    }

    /// `limits` (the rates and caps of SPEC §9 are `rate_limits`).
    /// `max_message`: the largest a publish may carry, which the default
    /// `max_body` leaves room for.
    fn limits(&mut self, file: &LimitsConfig, max_message: usize) -> Limits {
        let limits = Limits::default();
        let max_header = match &file.max_header {
            Some(s) if s.value.0 < 8192 => {
                self.error(s, "limits.max_header must be at least 8KiB");
                limits.max_header
            }
            Some(s) => s.value.0,
            None => limits.max_header,
        };
        Limits {
            max_connections: file.max_connections.unwrap_or(limits.max_connections),
            max_header,
            max_body: file
                .max_body
                .map_or_else(|| defaults::max_body(max_message), |b| b.0),
            header_read_timeout: file
                .header_read_timeout
                .map_or(limits.header_read_timeout, |d| d.0),
        }
    }

    /// `drain_window`: at most `shutdown_grace`, by default half of it.
    fn drain_window(
        &mut self,
        window: Option<&Spanned<DurationValue>>,
        shutdown_grace: Duration,
    ) -> Duration {
        match window {
            Some(w) if w.value.0 > shutdown_grace => {
                self.error(
                    w,
                    format!("drain_window must not exceed shutdown_grace ({shutdown_grace:?})"),
                );
                shutdown_grace / 2
            }
            Some(w) => w.value.0,
            None => shutdown_grace / 2,
        }
    }

    fn route(
        &mut self,
        spanned: &Spanned<RouteConfig>,
        upstreams: &BTreeMap<String, UpstreamSettings>,
        defaults: &RealtimeSettings,
        names: &mut BTreeSet<String>,
    ) -> Option<RouteSettings> {
        let r = &spanned.value;
        let name = r.name.value.clone();
        if !names.insert(name.clone()) {
            self.error(&r.name, format!("duplicate route name {name:?}"));
        }
        let (path, captures) = self.route_path(r, &name)?;
        let mut methods = Vec::new();
        for m in &r.matcher.methods {
            match Method::from_bytes(m.value.to_ascii_uppercase().as_bytes()) {
                Ok(method) => methods.push(method),
                Err(_) => self.error(m, format!("invalid HTTP method {:?}", m.value)),
            }
        }
        let mut add_headers = Vec::new();
        for (k, v) in &r.add_headers {
            match (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                (Ok(k), Ok(v)) => add_headers.push((k, v)),
                _ => self.error(
                    &r.name,
                    format!("route {name:?}: invalid add_headers entry {k:?}"),
                ),
            }
        }
        let strip_prefix = r.strip_prefix.as_ref().map(|s| {
            if !s.value.starts_with('/') {
                self.error(s, format!("strip_prefix {:?} must start with '/'", s.value));
            }
            s.value.clone()
        });

        if let (Some(a), None) = (&r.auth, &r.realtime) {
            self.error(
                a,
                format!("route {name:?}: auth applies to realtime routes only"),
            );
        }
        let action = self.route_action(spanned, &name, &captures, upstreams, defaults)?;
        let grip = r.grip.as_ref().is_some_and(|g| g.value);
        let ws_events = r.ws_events.as_ref().is_some_and(|w| w.value);
        for (key, flag) in [("grip", &r.grip), ("ws_events", &r.ws_events)] {
            if let Some(flag) = flag
                && flag.value
                && r.upstream.is_none()
            {
                self.error(
                    flag,
                    format!("route {name:?}: {key} needs upstream (it changes how upstream answers are read)"),
                );
            }
        }
        Some(RouteSettings {
            name,
            host: r.matcher.host.as_ref().map(|h| h.to_ascii_lowercase()),
            path,
            methods,
            action,
            strip_prefix,
            add_headers,
            grip,
            ws_events,
        })
    }

    /// A route's `match.path`/`path_prefix`, and the names its path
    /// template captures.
    fn route_path(&mut self, r: &RouteConfig, name: &str) -> Option<(PathMatch, Vec<String>)> {
        // The names the path captures; on a bad path template, those its
        // placeholders would capture, so no follow-on error is reported.
        let mut captures: Vec<String> = Vec::new();
        let path = match (&r.matcher.path, &r.matcher.path_prefix) {
            (Some(p), None) => match PathPattern::parse(&p.value) {
                Ok(pattern) => {
                    captures = pattern.names().map(str::to_owned).collect();
                    PathMatch::Template(pattern)
                }
                Err(e) => {
                    // Reported; the rest of the route is still checked.
                    self.error(p, format!("invalid path template {:?}: {e}", p.value));
                    if let Ok(t) = Template::parse(&p.value) {
                        captures = t.names().map(str::to_owned).collect();
                    }
                    PathMatch::Prefix("/".into())
                }
            },
            (None, Some(p)) => {
                if !p.value.starts_with('/') {
                    self.error(p, format!("path_prefix {:?} must start with '/'", p.value));
                }
                PathMatch::Prefix(p.value.clone())
            }
            (Some(p), Some(_)) => {
                self.error(
                    p,
                    format!("route {name:?}: match has both path and path_prefix; use one"),
                );
                return None;
            }
            (None, None) => PathMatch::Prefix("/".into()),
        };
        Some((path, captures))
    }

    /// A route's one action: `upstream`, `realtime` or `static`.
    fn route_action(
        &mut self,
        spanned: &Spanned<RouteConfig>,
        name: &str,
        captures: &[String],
        upstreams: &BTreeMap<String, UpstreamSettings>,
        defaults: &RealtimeSettings,
    ) -> Option<RouteAction> {
        let r = &spanned.value;
        let actions = usize::from(r.upstream.is_some())
            + usize::from(r.realtime.is_some())
            + usize::from(r.static_files.is_some());
        if actions != 1 {
            self.error(
                spanned,
                format!("route {name:?} must have exactly one of upstream, realtime or static (found {actions})"),
            );
            return None;
        }
        let action = if let Some(u) = &r.upstream {
            if !upstreams.contains_key(&u.value) {
                self.error(
                    u,
                    format!("route {name:?} names unknown upstream {:?}", u.value),
                );
            }
            RouteAction::Upstream(u.value.clone())
        } else if let Some(rt) = &r.realtime {
            let mut realtime = self.realtime_route(name, spanned, &rt.value, captures, defaults);
            realtime.auth = r
                .auth
                .as_ref()
                .and_then(|a| self.auth(name, a, upstreams))
                .map(std::sync::Arc::new);
            RouteAction::Realtime(Box::new(realtime))
        } else {
            let s = r.static_files.as_ref()?;
            let dir = self.resolve(&s.dir.value);
            if !dir.is_dir() {
                self.error(&s.dir, format!("static dir {:?} not found", s.dir.value));
            }
            RouteAction::Static(StaticSettings {
                dir,
                index: s.index.clone(),
            })
        };
        Some(action)
    }

    fn top_level_realtime(&mut self, rt: &RealtimeBlock) {
        let route_only: [(&str, Option<Position>); 4] = [
            ("channels", rt.channels.first().map(Position::from)),
            (
                "query_channels",
                rt.query_channels.as_ref().map(Position::from),
            ),
            ("transports", rt.transports.as_ref().map(Position::from)),
            (
                "client_publish",
                rt.client_publish.as_ref().map(Position::from),
            ),
        ];
        if let Some(max_total) = rt.history.as_ref().and_then(|h| h.max_total.as_ref())
            && max_total.value.0 == 0
        {
            self.error(
                max_total,
                "realtime.history.max_total must be more than 0 (history.messages: 0 keeps none)",
            );
        }
        for (key, at) in route_only {
            if let Some(at) = at {
                self.error(
                    at,
                    format!("realtime.{key} belongs in a route's realtime block"),
                );
            }
        }
    }

    fn realtime_route(
        &mut self,
        name: &str,
        route: &Spanned<RouteConfig>,
        rt: &RealtimeBlock,
        captures: &[String],
        defaults: &RealtimeSettings,
    ) -> RealtimeRoute {
        let mut channels = Vec::new();
        for c in &rt.channels {
            match Template::parse(&c.value) {
                Err(e) => self.error(c, format!("invalid channel template {:?}: {e}", c.value)),
                Ok(template) => {
                    for n in template.names() {
                        if !captures.iter().any(|c| c == n) {
                            self.error(c, format!("channel template {:?} uses {{{n}}}, which the route's path does not capture", c.value));
                        }
                    }
                    channels.push(template);
                }
            }
        }
        let query_channels = rt.query_channels.as_ref().is_some_and(|q| q.value);
        if rt.channels.is_empty() && !query_channels {
            self.error(
                route,
                format!("realtime route {name:?} has no channels and query_channels is false"),
            );
        }
        let transports = rt
            .transports
            .as_ref()
            .map(|t| t.value.clone())
            .unwrap_or_else(defaults::transports);
        if transports.is_empty() {
            self.error(
                route,
                format!("realtime route {name:?} enables no transport"),
            );
        }
        let client_publish = match rt.client_publish.as_ref().map(|c| &c.value) {
            None | Some(ClientPublishConfig::All(false)) => ClientPublish::Denied,
            Some(ClientPublishConfig::All(true)) => ClientPublish::Granted,
            Some(ClientPublishConfig::Patterns(patterns)) => {
                let at = rt
                    .client_publish
                    .as_ref()
                    .map(Position::from)
                    .unwrap_or_default();
                let mut parsed = Vec::new();
                for p in patterns {
                    match Template::parse(p) {
                        Ok(t) => parsed.push(t),
                        Err(e) => {
                            self.error(at, format!("invalid client_publish pattern {p:?}: {e}"))
                        }
                    }
                }
                ClientPublish::Patterns(parsed)
            }
        };
        if let Some(max_total) = rt.history.as_ref().and_then(|h| h.max_total.as_ref()) {
            self.error(
                max_total,
                format!("realtime route {name:?}: history.max_total is the hub's, set it in the top-level realtime block"),
            );
        }
        let mut settings = resolve_realtime(*defaults, rt);
        settings.presence = self.route_presence(&rt.presence);
        if settings.queue == 0 {
            self.error(
                route,
                format!("realtime route {name:?}: queue must be at least 1"),
            );
        }
        RealtimeRoute {
            name: name.into(),
            channels,
            query_channels,
            transports,
            client_publish,
            settings,
            auth: None,
            allowed_origins: rt
                .allowed_origins
                .clone()
                .map(Into::into)
                .or_else(|| self.allowed_origins.clone()),
        }
    }
}

fn resolve_realtime(base: RealtimeSettings, o: &RealtimeBlock) -> RealtimeSettings {
    let history = o.history.as_ref();
    RealtimeSettings {
        heartbeat: o.heartbeat.map_or(base.heartbeat, |d| d.0),
        pong_timeout: o.pong_timeout.map_or(base.pong_timeout, |d| d.0),
        longpoll_timeout: o.longpoll_timeout.map_or(base.longpoll_timeout, |d| d.0),
        sse_retry: o.sse_retry.map_or(base.sse_retry, |d| d.0),
        queue: o.queue.unwrap_or(base.queue),
        on_lag: o.on_lag.unwrap_or(base.on_lag),
        history_messages: history
            .and_then(|h| h.messages)
            .unwrap_or(base.history_messages),
        history_max_age: history
            .and_then(|h| h.max_age)
            .map_or(base.history_max_age, |d| d.0),
        history_max_total: history
            .and_then(|h| h.max_total.as_ref())
            .map_or(base.history_max_total, |b| b.value.0),
        max_message: o.max_message.map_or(base.max_message, |b| b.0),
        presence: base.presence,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    fn parse_str(text: &str) -> Result<Config, Error> {
        parse(Path::new("test.yaml"), text, &|name| match name {
            "TOKEN" => Some("secret".into()),
            _ => None,
        })
    }

    fn first_error(text: &str) -> String {
        parse_str(text).unwrap_err().0[0].to_string()
    }

    const MINIMAL: &str = "listen:\n  http: [\"127.0.0.1:0\"]\n";

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = parse_str(MINIMAL).unwrap();
        assert_eq!(c.realtime, RealtimeSettings::default());
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.shutdown_grace, Duration::from_secs(30));
        assert_eq!(c.drain_window, Duration::from_secs(15), "half the grace");
        assert_eq!(c.internal.listen, default_internal());
    }

    #[test]
    fn unknown_key_is_an_error_with_its_position() {
        let e = first_error("listen:\n  http: [\"127.0.0.1:0\"]\n  bogus: 1\n");
        assert!(e.starts_with("test.yaml:3:3: "), "{e}");
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn unknown_upstream_is_reported_at_its_reference() {
        let e = first_error(
            "listen: { http: [\"127.0.0.1:0\"] }\nroutes:\n  - name: a\n    match: { path_prefix: / }\n    upstream: nope\n",
        );
        assert!(e.starts_with("test.yaml:5:15: "), "{e}");
        assert!(e.contains("unknown upstream \"nope\""), "{e}");
    }

    #[test]
    fn interpolation_replaces_and_reports_missing_variables() {
        let c = parse_str("listen: { http: [\"127.0.0.1:0\"] }\ninternal:\n  listen: \"${ADDR:-127.0.0.1:9}\"\n  tokens: [\"${TOKEN}\"]\n").unwrap();
        assert_eq!(c.internal.listen.port(), 9);
        assert_eq!(c.internal.tokens, ["secret"]);
        let e = first_error("listen: { http: [\"${NOPE}\"] }\n");
        assert_eq!(
            e,
            "test.yaml:1:19: environment variable NOPE is not set (use ${NOPE:-default})"
        );
    }

    #[test]
    fn durations_and_sizes_parse_with_units() {
        let c = parse_str("listen: { http: [\"127.0.0.1:0\"] }\nrealtime: { heartbeat: 250ms, max_message: 64KiB }\nlimits: { max_body: 2MiB, header_read_timeout: 1m }\n").unwrap();
        assert_eq!(c.realtime.heartbeat, Duration::from_millis(250));
        assert_eq!(c.realtime.max_message, 64 << 10);
        assert_eq!(c.limits.max_body, 2 << 20);
        assert_eq!(c.limits.header_read_timeout, Duration::from_secs(60));
        let e = first_error("listen: { http: [\"127.0.0.1:0\"] }\nrealtime: { heartbeat: soon }\n");
        assert!(e.starts_with("test.yaml:2:24: "), "{e}");
        assert!(e.contains("invalid duration"), "{e}");
    }
}
