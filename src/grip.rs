//! GRIP compatibility (SPEC §5): existing Pushpin backends and publishers
//! work unchanged.
//!
//! * [`publish`] -- `POST /publish/` on the internal listener: Pushpin items
//!   become publications carrying GRIP formats (`hub::grip`), published
//!   through the backplane like every message.
//! * [`instruct`] -- reads a `grip: true` route's upstream answer
//!   (`Grip-*` headers or `application/grip-instruct`).
//! * [`hold`] -- held streams and held responses, subscribed in the hub.
//! * [`raw`] -- a `grip: true` route's request served on the raw socket.
//! * [`sig`] -- the `Grip-Sig` JWT on requests to GRIP upstreams.
//! * [`wsevents`] -- WebSocket-over-HTTP for `ws_events: true` routes.

pub mod hold;
pub mod instruct;
pub mod item;
pub mod publish;
pub mod raw;
pub mod sig;
pub mod wsevents;

use std::time::Duration;

use bytes::Bytes;
use http::response::Parts;
use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri};
use http_body_util::{BodyExt, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use tracing::{debug, warn};

use crate::error::{Body, ErrorCode, HttpError};

use self::hold::{Holds, Served};

/// How often a stale response hold asks the origin again before it
/// answers with the instruct's own response.
pub const MAX_RETRIES: usize = 3;

/// GRIP processing of proxied responses.
pub struct Grip {
    pub holds: Holds,
    /// The largest instruct (or initial hold body) read from an upstream.
    pub max_instruct: usize,
}

/// What it takes to send a body-less request to the origin again, when a
/// response hold turns out stale (Pushpin's retry). Built by the proxy for
/// `grip: true` routes only.
pub struct Replay {
    pub client: Client<HttpConnector, Body>,
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub signer: Option<sig::Signer>,
    pub timeout: Duration,
}

impl Replay {
    /// Sends the request again with `Grip-Last: CHANNEL; last-id=ID`.
    async fn send(
        &self,
        last_ids: &[(String, String)],
    ) -> Result<Response<hyper::body::Incoming>, String> {
        let mut request = Request::new(crate::error::empty());
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        let headers = request.headers_mut();
        *headers = self.headers.clone();
        headers.remove("grip-last");
        for (channel, id) in last_ids {
            if let Ok(v) = HeaderValue::from_str(&format!("{channel}; last-id={id}")) {
                headers.append("grip-last", v);
            }
        }
        if let Some(signer) = &self.signer {
            signer.sign(headers);
        }
        let mut response = tokio::time::timeout(self.timeout, self.client.request(request))
            .await
            .map_err(|_| "timed out".to_owned())?
            .map_err(|e| crate::error::error_chain(&e))?;
        crate::proxy::headers::remove_hop_by_hop(response.headers_mut());
        Ok(response)
    }
}

impl Grip {
    /// Handles a `grip: true` route's upstream response: `Grip-*` headers
    /// are always stripped; an instruction is read and served (a hold, or
    /// the response it describes); anything else streams through. A stale
    /// response hold asks the origin again through `replay` (when the
    /// request had no body), at most [`MAX_RETRIES`] times.
    pub async fn respond<B>(
        &self,
        mut parts: Parts,
        body: B,
        upstream: &str,
        replay: Option<Replay>,
    ) -> Response<Body>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<crate::error::BoxError>,
    {
        if !instruct::wants_instruct(&parts.headers) {
            instruct::strip(&mut parts.headers);
            return Response::from_parts(parts, body.map_err(Into::into).boxed_unsync());
        }
        let mut bytes = match self.read(body, upstream).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        let mut retries = 0;
        loop {
            let instruct = match instruct::parse(parts.status, &parts.headers, bytes) {
                Ok(i) => i,
                Err(reason) => {
                    warn!(upstream, %reason, "GRIP upstream sent an invalid instruction.");
                    return HttpError::new(
                        ErrorCode::GripInstructInvalid,
                        format!("upstream {upstream} sent an invalid GRIP instruction: {reason}"),
                    )
                    .into_response();
                }
            };
            let (last_ids, fallback) = match self.holds.serve(instruct).await {
                Served::Response(r) => return r,
                Served::Stale { last_ids, fallback } => (last_ids, fallback),
            };
            let Some(replay) = replay.as_ref().filter(|_| retries < MAX_RETRIES) else {
                return fallback;
            };
            retries += 1;
            debug!(
                upstream,
                retries, "Stale GRIP hold; asking the origin again."
            );
            let response = match replay.send(&last_ids).await {
                Ok(r) => r,
                Err(reason) => {
                    debug!(upstream, %reason, "GRIP retry failed; answering the hold's response.");
                    return fallback;
                }
            };
            let (next, body) = response.into_parts();
            parts = next;
            if !instruct::wants_instruct(&parts.headers) {
                instruct::strip(&mut parts.headers);
                return Response::from_parts(parts, body.map_err(Into::into).boxed_unsync());
            }
            bytes = match self.read(body, upstream).await {
                Ok(b) => b,
                Err(r) => return r,
            };
        }
    }

    async fn read<B>(&self, body: B, upstream: &str) -> Result<Bytes, Response<Body>>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<crate::error::BoxError>,
    {
        match Limited::new(body, self.max_instruct).collect().await {
            Ok(c) => Ok(c.to_bytes()),
            Err(_) => {
                warn!(
                    upstream,
                    "GRIP upstream instruction unreadable or over limits.max_body."
                );
                Err(HttpError::new(
                    ErrorCode::GripInstructUnreadable,
                    format!("upstream {upstream} sent a GRIP answer that could not be read"),
                )
                .into_response())
            }
        }
    }
}
