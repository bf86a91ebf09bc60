//! The client's request body on its way upstream, remembering whether it
//! failed: a malformed body (a chunk size that overflows, a short body) is
//! the client's fault, so the proxy answers 400 for it, not 502.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use crate::error::{Body as BoxBody, BoxError};

/// Set once the client's body has yielded an error.
#[derive(Clone, Default)]
pub(super) struct Failed(Arc<AtomicBool>);

impl Failed {
    pub(super) fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// `body`, flagging `failed` when it errors. The error still reaches the
/// upstream client, which aborts the upstream request.
pub(super) struct Watched {
    body: BoxBody,
    failed: Failed,
}

impl Watched {
    pub(super) fn new(body: BoxBody, failed: Failed) -> Self {
        Self { body, failed }
    }
}

impl Body for Watched {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(Some(Err(_))) = &polled {
            self.failed.0.store(true, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    struct Broken;

    impl Body for Broken {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(Some(Err("invalid chunk size".into())))
        }
    }

    #[tokio::test]
    async fn a_failing_body_is_flagged_and_a_good_one_is_not() {
        let failed = Failed::default();
        let good = Watched::new(crate::error::full("ok"), failed.clone());
        assert_eq!(good.collect().await.unwrap().to_bytes(), "ok");
        assert!(!failed.get());
        let bad = Watched::new(Broken.boxed_unsync(), failed.clone());
        assert!(bad.collect().await.is_err());
        assert!(failed.get());
    }
}
