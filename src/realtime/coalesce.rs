//! The streams' write helpers: [`Coalesce`] joins a burst into one write,
//! [`send`] writes and flushes.

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Writes and flushes (a TLS stream holds bytes until flushed).
pub async fn send<W: AsyncWrite + Unpin>(writer: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    writer.write_all(bytes).await?;
    writer.flush().await
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
