//! The HTTP client side of `pushgate publish`: one POST to the internal
//! listener's `/publish`.

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid URL: {0}")]
    Url(String),
    #[error("request failed: {0}")]
    Request(String),
}

/// POSTs `body` as JSON to `url`; returns the status and the body text.
pub async fn post(
    url: &str,
    token: Option<&str>,
    body: String,
) -> Result<(StatusCode, String), Error> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| Error::Url(e.to_string()))?;
    if uri.scheme_str() != Some("http") {
        return Err(Error::Url(
            "only http:// internal URLs are supported".into(),
        ));
    }
    let mut request = Request::post(uri).header(header::CONTENT_TYPE, "application/json");
    if let Some(t) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let request = request
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| Error::Url(e.to_string()))?;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let response =
        tokio::time::timeout(std::time::Duration::from_secs(30), client.request(request))
            .await
            .map_err(|_| Error::Request("timed out".into()))?
            .map_err(|e| Error::Request(crate::error::error_chain(&e)))?;
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| Error::Request(e.to_string()))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}
