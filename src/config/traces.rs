//! The top-level `tracing:` block (docs/configuration.md, "Traces"):
//! OpenTelemetry traces exported over OTLP/HTTP. Absent: no traces.
//!
//! ```yaml
//! tracing:
//!   otlp:
//!     endpoint: http://otel-collector:4318   # /v1/traces is appended
//!     sample_ratio: 0.01                     # default 1.0
//! ```

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::Validator;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TracingConfig {
    otlp: Option<Spanned<OtlpConfig>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct OtlpConfig {
    endpoint: Spanned<String>,
    #[serde(default)]
    sample_ratio: Option<Spanned<f64>>,
}

/// Resolved `tracing.otlp`.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingSettings {
    /// Where spans are POSTed: the collector's `.../v1/traces` URL.
    pub endpoint: String,
    /// Share of new traces recorded (0 to 1). A request that carries a
    /// `traceparent` follows its sampled flag instead.
    pub sample_ratio: f64,
}

/// The OTLP/HTTP traces URL for a collector `endpoint`: `/v1/traces` is
/// appended unless the path already ends with it (OTLP exporter spec).
fn traces_url(endpoint: &http::Uri) -> String {
    let base = endpoint.to_string();
    if endpoint.path().ends_with("/v1/traces") {
        base
    } else {
        format!("{}/v1/traces", base.trim_end_matches('/'))
    }
}

impl Validator<'_> {
    pub(super) fn tracing(
        &mut self,
        file: &Option<Spanned<TracingConfig>>,
    ) -> Option<TracingSettings> {
        let block = &file.as_ref()?.value;
        let Some(otlp) = &block.otlp else {
            self.error(
                file.as_ref()?,
                "tracing needs an otlp block: tracing: { otlp: { endpoint: http://HOST:4318 } }",
            );
            return None;
        };
        let otlp = &otlp.value;
        let endpoint = &otlp.endpoint;
        let uri = match endpoint.value.parse::<http::Uri>() {
            Ok(u)
                if matches!(u.scheme_str(), Some("http" | "https"))
                    && u.authority().is_some()
                    && u.query().is_none() =>
            {
                Some(u)
            }
            _ => {
                self.error(
                    endpoint,
                    format!(
                        "tracing.otlp.endpoint {:?} must be an http:// or https:// URL, such as \"http://otel-collector:4318\"",
                        endpoint.value
                    ),
                );
                None
            }
        };
        let sample_ratio = match &otlp.sample_ratio {
            None => 1.0,
            Some(r) if (0.0..=1.0).contains(&r.value) => r.value,
            Some(r) => {
                self.error(
                    r,
                    format!(
                        "tracing.otlp.sample_ratio must be between 0 and 1, not {}",
                        r.value
                    ),
                );
                1.0
            }
        };
        Some(TracingSettings {
            endpoint: traces_url(&uri?),
            sample_ratio,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::traces_url;

    #[test]
    fn traces_path_is_appended_once() {
        let url = |s: &str| traces_url(&s.parse().unwrap());
        assert_eq!(url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(url("https://c/otlp"), "https://c/otlp/v1/traces");
        assert_eq!(url("http://c:4318/v1/traces"), "http://c:4318/v1/traces");
    }
}
