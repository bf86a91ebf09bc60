//! GRIP compatibility (SPEC §5): existing Pushpin backends and publishers
//! work unchanged.
//!
//! * [`publish`] -- `POST /publish/` on the internal listener: Pushpin items
//!   become publications carrying GRIP formats (`hub::grip`), published
//!   through the backplane like every message.
//! * [`instruct`] -- reads a `grip: true` route's upstream answer
//!   (`Grip-*` headers or `application/grip-instruct`).
//! * [`hold`] -- held streams and held responses, subscribed in the hub.
//! * [`sig`] -- the `Grip-Sig` JWT on requests to GRIP upstreams.
//! * [`wsevents`] -- WebSocket-over-HTTP for `ws_events: true` routes.

pub mod hold;
pub mod instruct;
pub mod publish;
pub mod sig;
pub mod wsevents;

use bytes::Bytes;
use http::Response;
use http::response::Parts;
use http_body_util::{BodyExt, Limited};
use tracing::warn;

use crate::error::{Blame, Body, HttpError};

use self::hold::Holds;

/// GRIP processing of proxied responses.
pub struct Grip {
    pub holds: Holds,
    /// The largest instruct (or initial hold body) read from an upstream.
    pub max_instruct: usize,
}

impl Grip {
    /// Handles a `grip: true` route's upstream response: `Grip-*` headers
    /// are always stripped; an instruction is read and served (a hold, or
    /// the response it describes); anything else streams through.
    pub async fn respond<B>(&self, mut parts: Parts, body: B, upstream: &str) -> Response<Body>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<crate::error::BoxError>,
    {
        if !instruct::wants_instruct(&parts.headers) {
            instruct::strip(&mut parts.headers);
            return Response::from_parts(parts, body.map_err(Into::into).boxed_unsync());
        }
        let bytes = match Limited::new(body, self.max_instruct).collect().await {
            Ok(c) => c.to_bytes(),
            Err(_) => {
                warn!(
                    upstream,
                    "GRIP upstream instruction unreadable or over limits.max_body."
                );
                return HttpError::blamed(
                    Blame::Upstream,
                    "grip_instruct_unreadable",
                    format!("upstream {upstream} sent a GRIP answer that could not be read"),
                )
                .into_response();
            }
        };
        match instruct::parse(parts.status, &parts.headers, bytes) {
            Ok(instruct) => self.holds.serve(instruct).await,
            Err(reason) => {
                warn!(upstream, %reason, "GRIP upstream sent an invalid instruction.");
                HttpError::blamed(
                    Blame::Upstream,
                    "grip_instruct_invalid",
                    format!("upstream {upstream} sent an invalid GRIP instruction: {reason}"),
                )
                .into_response()
            }
        }
    }
}
