//! OpenTelemetry traces (`tracing.otlp`, docs/configuration.md "Traces"):
//! spans built with `tracing` macros, turned into OpenTelemetry spans by
//! `tracing-opentelemetry` and exported in batches over OTLP/HTTP
//! (protobuf) on a background thread.
//!
//! Spans: `proxy` (a proxied request; its W3C `traceparent` is the parent,
//! and the upstream gets ours), `publish` (`POST /publish`),
//! `backplane.publish` (its child), `deliver` (one per batch the hub fans
//! out, a root span *linked* to the publish that caused it),
//! `auth.callback` and `webhook` (both send their `traceparent`).
//!
//! Off (no `tracing:` block), nothing is installed: every function here
//! starts with [`enabled`], one relaxed atomic load, and returns `None`;
//! `traceparent` headers pass through to upstreams untouched, as before.
//!
//! Sampling is decided here, before a span exists: a request that carries
//! a `traceparent` follows its sampled flag, one without is a new trace
//! with probability `sample_ratio`, and the other spans are recorded only
//! inside a recorded one. A request that is not sampled gets no span at
//! all (its `traceparent`, if any, passes through untouched), because
//! tracing-opentelemetry builds every span it is handed and lets the SDK's
//! sampler drop it only at the end: at `sample_ratio: 0.01` that cost a
//! quarter of the publish rate (BENCHMARKS.md, "Traces").
//!
//! No `crate::` imports: the hub (the lowest layer) opens `deliver` spans.

use std::cell::Cell;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::Either;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry::Context;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing::{Instrument, Span, field};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{EnvFilter, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

/// Every span this module makes has this target: the OpenTelemetry layer
/// sees only these, the log layer never does.
const TARGET: &str = "pushgate::telemetry";
/// One export POST's deadline.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Most time the final export may take at shutdown (a collector that is
/// down must not hold the exit).
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest collector answer read.
const MAX_ANSWER: usize = 64 * 1024;

static ON: AtomicBool = AtomicBool::new(false);
/// `sample_ratio` as a threshold: a new trace starts when a random `u64`
/// is below it (`u64::MAX`: always).
static ROOT_THRESHOLD: AtomicU64 = AtomicU64::new(0);

/// Whether traces are on (set once by [`Traces::install`]).
#[inline]
pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// The installed exporter: [`Traces::shutdown`] flushes what is pending.
pub struct Traces {
    provider: SdkTracerProvider,
}

impl Traces {
    /// Installs the global subscriber: the log output `filter` selects
    /// (text or `json`), plus this module's spans exported to `endpoint`
    /// (the full `.../v1/traces` URL), new traces sampled at
    /// `sample_ratio`. Needs a tokio runtime (exports run on it).
    pub fn install(
        endpoint: &str,
        sample_ratio: f64,
        json: bool,
        filter: EnvFilter,
    ) -> Result<Self, Error> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(ExportClient::new(endpoint.starts_with("https:"))?)
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(endpoint)
            .with_timeout(EXPORT_TIMEOUT)
            .build()?;
        // Every span handed to the SDK was sampled here already (see the
        // module's doc); a `deliver` is a root linked to its publish.
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
            .with_resource(Resource::builder().with_service_name("pushgate").build())
            .build();
        let tracer = provider.tracer("pushgate");
        let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
        let logs: Box<dyn Layer<Registry> + Send + Sync> = if json {
            logs.json().boxed()
        } else {
            logs.boxed()
        };
        let filter = filter.add_directive(format!("{TARGET}=off").parse()?);
        let spans = tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(filter_fn(|m| m.is_span() && m.target() == TARGET));
        tracing_subscriber::registry()
            .with(logs.with_filter(filter))
            .with(spans)
            .try_init()?;
        ROOT_THRESHOLD.store(threshold(sample_ratio), Ordering::Relaxed);
        ON.store(true, Ordering::Relaxed);
        Ok(Self { provider })
    }

    /// Exports what is pending and stops the exporter thread, waiting at
    /// most [`SHUTDOWN_TIMEOUT`] (off the runtime's threads: the export
    /// itself runs on the runtime).
    pub async fn shutdown(self) {
        let provider = self.provider;
        let done =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT))
                .await;
        if let Ok(Err(e)) = done {
            tracing::warn!(error = %e, "Traces not all exported at shutdown.");
        }
    }
}

fn threshold(ratio: f64) -> u64 {
    if ratio >= 1.0 {
        u64::MAX
    } else {
        // Saturating; 0 (and NaN, which config refuses) never samples.
        (ratio.max(0.0) * u64::MAX as f64) as u64
    }
}

/// Whether a new trace starts here: `sample_ratio`'s roll.
fn sampled_root() -> bool {
    let threshold = ROOT_THRESHOLD.load(Ordering::Relaxed);
    threshold == u64::MAX || random() < threshold
}

/// A per-thread xorshift64* sequence seeded from the std hasher's random
/// keys: a sampling roll, not a secret.
fn random() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(
            std::collections::hash_map::RandomState::new().build_hasher().finish() | 1,
        );
    }
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        state.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

/// A W3C `traceparent`'s sampled flag (`version-traceid-parentid-flags`);
/// `None` when there is none or it is malformed (then the request starts
/// a trace of its own).
fn parent_sampled(headers: &HeaderMap) -> Option<bool> {
    let value = headers.get("traceparent")?.to_str().ok()?;
    let mut parts = value.trim().split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex(version, 2) || version == "ff" || !hex(trace, 32) || !hex(parent, 16) {
        return None;
    }
    if trace.bytes().all(|b| b == b'0') || parent.bytes().all(|b| b == b'0') {
        return None;
    }
    let flags = u8::from_str_radix(flags.get(..2)?, 16).ok()?;
    Some(flags & 1 == 1)
}

/// Whether a request-scoped span is recorded: as its `traceparent` says,
/// else `sample_ratio`'s roll.
fn wanted(headers: &HeaderMap) -> bool {
    parent_sampled(headers).unwrap_or_else(sampled_root)
}

/// Whether the current span is one of ours (so a recorded trace is open).
fn in_trace() -> bool {
    Span::current()
        .metadata()
        .is_some_and(|m| m.target() == TARGET)
}

/// The exporter's HTTP client: hyper on the runtime that installed it
/// (the SDK's batch thread has no reactor, so each POST is spawned there).
#[derive(Debug)]
struct ExportClient {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    runtime: tokio::runtime::Handle,
}

impl ExportClient {
    /// The system's trust roots; a plain `http://` collector needs none (a
    /// slim image may have none), an `https://` one fails without them.
    fn new(https: bool) -> Result<Self, Error> {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let builder = match builder.with_provider_and_native_roots(provider.clone()) {
            Ok(b) => b,
            Err(e) if https => {
                return Err(format!("the https collector needs trust roots: {e}").into());
            }
            Err(_) => hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(
                rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()?
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
            ),
        };
        let connector = builder.https_or_http().enable_http1().build();
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            runtime: tokio::runtime::Handle::try_current()?,
        })
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for ExportClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, Error> {
        let client = self.client.clone();
        let task = self.runtime.spawn(async move {
            let (parts, body) = request.into_parts();
            let sent = client.request(Request::from_parts(parts, Full::new(body)));
            let response = tokio::time::timeout(EXPORT_TIMEOUT, sent).await??;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_ANSWER).collect().await?.to_bytes();
            Ok::<_, Error>(Response::from_parts(parts, body))
        });
        task.await?
    }
}

// === spans (each `None` when traces are off) ===

fn extract(headers: &HeaderMap) -> Option<Context> {
    headers
        .contains_key("traceparent")
        .then(|| TraceContextPropagator::new().extract(&HeaderExtractor(headers)))
}

/// Writes `span`'s `traceparent` (and `tracestate`) into `headers`.
fn inject(span: &Span, headers: &mut HeaderMap) {
    TraceContextPropagator::new().inject_context(&span.context(), &mut HeaderInjector(headers));
}

/// The parent a request-scoped span takes: the `traceparent` the request
/// carried, else none (a root).
fn adopt(span: &Span, headers: &HeaderMap) {
    if let Some(parent) = extract(headers) {
        let _ = span.set_parent(parent);
    }
}

/// A proxied request: parent from the client's `traceparent`, and the
/// upstream request's `traceparent` (in `headers`) replaced by ours.
pub fn proxy(
    headers: &mut HeaderMap,
    method: &http::Method,
    route: &str,
    upstream: &str,
) -> Option<Span> {
    if !enabled() || !wanted(headers) {
        return None;
    }
    let span = tracing::info_span!(
        target: TARGET,
        "proxy",
        otel.kind = "server",
        http.request.method = %method,
        http.route = route,
        pushgate.upstream = upstream,
        http.response.status_code = field::Empty,
        otel.status_code = field::Empty,
    );
    adopt(&span, headers);
    inject(&span, headers);
    Some(span)
}

/// `POST /publish`: parent from the publisher's `traceparent`.
pub fn publish(headers: &HeaderMap) -> Option<Span> {
    if !enabled() || !wanted(headers) {
        return None;
    }
    let span = tracing::info_span!(
        target: TARGET,
        "publish",
        otel.kind = "server",
        http.response.status_code = field::Empty,
        otel.status_code = field::Empty,
    );
    adopt(&span, headers);
    Some(span)
}

/// Runs a request's handling in `span` (if any) and records the answer's
/// status on it.
pub async fn respond<B, F>(span: Option<Span>, handling: F) -> Response<B>
where
    F: Future<Output = Response<B>>,
{
    let Some(span) = span else {
        return handling.await;
    };
    let response = handling.instrument(span.clone()).await;
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    response
}

/// `backplane.publish`, inside a recorded `publish`: `start` (which may
/// already deliver, as the memory backplane does) and the future it
/// returns run in the span.
pub fn backplane<F: Future>(
    name: &'static str,
    start: impl FnOnce() -> F,
) -> impl Future<Output = F::Output> {
    if !enabled() || !in_trace() {
        return Either::Left(start());
    }
    let span = tracing::info_span!(target: TARGET, "backplane.publish", pushgate.backplane = name);
    let sending = span.in_scope(start);
    Either::Right(sending.instrument(span))
}

/// `deliver`: the hub fanning one batch out to its subscribers. A root
/// span linked to the current span (the publish, when the batch was
/// published on this node), so a trace does not grow with subscribers;
/// recorded when that span is.
pub fn deliver(messages: usize) -> Option<tracing::span::EnteredSpan> {
    if !enabled() || !in_trace() {
        return None;
    }
    let cause = Span::current().context().span().span_context().clone();
    let span = tracing::info_span!(target: TARGET, parent: None, "deliver", pushgate.messages = messages as u64);
    span.add_link(cause);
    Some(span.entered())
}

/// `auth.callback`: a child of the current span, else of the client's
/// `traceparent` (`client`); the callback request (`outgoing`) carries ours.
pub fn auth_callback(upstream: &str, client: &HeaderMap, outgoing: &mut HeaderMap) -> Option<Span> {
    if !enabled() {
        return None;
    }
    let child = in_trace();
    if !child && !wanted(client) {
        return None;
    }
    let span = tracing::info_span!(target: TARGET, "auth.callback", otel.kind = "client", pushgate.upstream = upstream);
    if !child {
        adopt(&span, client);
    }
    inject(&span, outgoing);
    Some(span)
}

/// `webhook`: one lifecycle-events POST (a root span); the request
/// (`outgoing`) carries its `traceparent`.
pub fn webhook(events: usize, outgoing: &mut HeaderMap) -> Option<Span> {
    if !enabled() || !sampled_root() {
        return None;
    }
    let span = tracing::info_span!(target: TARGET, parent: None, "webhook", otel.kind = "client", pushgate.events = events as u64);
    inject(&span, outgoing);
    Some(span)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_traceparent(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("traceparent", value.parse().unwrap());
        h
    }

    #[test]
    fn a_traceparent_decides_by_its_sampled_flag() {
        let id = "0af7651916cd43dd8448eb211c80319c";
        let parent = "b7ad6b7169203331";
        for (flags, sampled) in [("01", true), ("00", false), ("03", true), ("02", false)] {
            let h = with_traceparent(&format!("00-{id}-{parent}-{flags}"));
            assert_eq!(parent_sampled(&h), Some(sampled), "{flags}");
        }
        for bad in [
            "",
            "00-xyz-b7ad6b7169203331-01".to_owned().as_str(),
            &format!("ff-{id}-{parent}-01"),
            &format!("00-{}-{parent}-01", "0".repeat(32)),
            &format!("00-{id}-0000000000000000-01"),
            &format!("00-{id}-{parent}"),
            &format!("00-{id}-{parent}-zz"),
        ] {
            let h = if bad.is_empty() {
                HeaderMap::new()
            } else {
                with_traceparent(bad)
            };
            assert_eq!(parent_sampled(&h), None, "{bad:?}");
        }
    }

    #[test]
    fn the_root_roll_keeps_its_ratio() {
        assert_eq!(threshold(1.0), u64::MAX);
        assert_eq!(threshold(0.0), 0);
        let t = threshold(0.25);
        let n = 100_000;
        let hits = (0..n).filter(|_| random() < t).count();
        // 25 % of 100,000 draws: 5 standard deviations is about 685.
        assert!((24_300..=25_700).contains(&hits), "{hits}");
    }
}
