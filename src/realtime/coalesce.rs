//! The streams' write helpers: [`Coalesce`] joins a burst into one write,
//! [`send`] writes and flushes, [`send_within`] gives up after a limit.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Writes and flushes (a TLS stream holds bytes until flushed).
pub async fn send<W: AsyncWrite + Unpin>(writer: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    writer.write_all(bytes).await?;
    writer.flush().await
}

/// [`send`], given up (`TimedOut`) when it is not done `limit` after the
/// socket first refused bytes: a peer that does not read cannot hold its
/// task, socket and queue forever. A hand-written future, not an `async
/// fn` around `tokio::time::timeout`: it sits in every stream's state, and
/// its timer is allocated only when the socket is full, so a write the
/// socket takes at once (nearly all of them) needs none.
pub fn send_within<'a, W: AsyncWrite + Unpin>(
    writer: &'a mut W,
    bytes: &'a [u8],
    limit: Duration,
) -> SendWithin<'a, W> {
    SendWithin {
        writer,
        bytes,
        limit,
        deadline: None,
    }
}

/// The future of [`send_within`].
pub struct SendWithin<'a, W> {
    writer: &'a mut W,
    /// What is left to write.
    bytes: &'a [u8],
    limit: Duration,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<W: AsyncWrite + Unpin> Future for SendWithin<'_, W> {
    type Output = std::io::Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        loop {
            if !this.bytes.is_empty() {
                match Pin::new(&mut *this.writer).poll_write(cx, this.bytes) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                    }
                    Poll::Ready(Ok(n)) => this.bytes = &this.bytes[n.min(this.bytes.len())..],
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => break,
                }
            } else {
                match Pin::new(&mut *this.writer).poll_flush(cx) {
                    Poll::Ready(done) => return Poll::Ready(done),
                    Poll::Pending => break,
                }
            }
        }
        let limit = this.limit;
        let deadline = this
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::ErrorKind::TimedOut.into())),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Joins encoded items into one buffer for one write, without copying
/// (or allocating) when there is a single item, the common case.
#[derive(Default)]
pub struct Coalesce {
    first: Option<Bytes>,
    joined: Option<BytesMut>,
}

impl Coalesce {
    pub fn push(&mut self, bytes: Bytes) {
        if let Some(joined) = &mut self.joined {
            joined.extend_from_slice(&bytes);
            return;
        }
        match self.first.take() {
            None => self.first = Some(bytes),
            Some(first) => {
                let mut joined = BytesMut::with_capacity(2 * (first.len() + bytes.len()));
                joined.extend_from_slice(&first);
                joined.extend_from_slice(&bytes);
                self.joined = Some(joined);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.first.is_none() && self.joined.is_none()
    }

    pub fn finish(self) -> Bytes {
        match self.joined {
            Some(joined) => joined.freeze(),
            None => self.first.unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalesce_joins_in_order_and_keeps_a_lone_chunk() {
        let lone = Bytes::from_static(b"abc");
        let mut c = Coalesce::default();
        c.push(lone.clone());
        let out = c.finish();
        assert_eq!(out.as_ptr(), lone.as_ptr(), "a lone chunk is not copied");
        let mut c = Coalesce::default();
        for part in ["a", "bc", "", "def"] {
            c.push(Bytes::from(part));
        }
        assert!(!c.is_empty(), "joined chunks are not empty");
        assert_eq!(&c.finish()[..], b"abcdef");
        assert!(Coalesce::default().is_empty());
        assert!(Coalesce::default().finish().is_empty());
    }
}
