//! A held GRIP response read as a stream (tests/grip.rs,
//! tests/grip_ecosystem.rs): its status and headers, then its body up to
//! an expected end or to the end of the stream.

use bytes::Bytes;
use futures_util::StreamExt;

use super::{Pushgate, within};

/// A held response: status and headers, the body read on demand.
pub struct Held {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub stream: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<Bytes>> + Send>>,
    buffer: Vec<u8>,
}

impl Held {
    pub async fn open(pg: &Pushgate, path: &str) -> Self {
        let response = within(
            "held response headers",
            pg.client().get(pg.url(path)).send(),
        )
        .await
        .unwrap();
        Self {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            stream: Box::pin(response.bytes_stream()),
            buffer: Vec::new(),
        }
    }

    /// Opens a held stream on `path` whose origin writes `first` first,
    /// reads that, and waits until `channel` has the hold as its only
    /// subscriber: what is published next reaches it.
    pub async fn started(pg: &Pushgate, path: &str, first: &str, channel: &str) -> Self {
        let mut held = Self::open(pg, path).await;
        assert_eq!(held.status, 200, "{path}");
        assert_eq!(held.read_until(first).await, first);
        pg.wait_subscribers(channel, 1).await;
        held
    }

    /// Reads until the body so far ends with `expected`; returns it all.
    pub async fn read_until(&mut self, expected: &str) -> String {
        within(&format!("{expected:?} on the held stream"), async {
            while !self.buffer.ends_with(expected.as_bytes()) {
                match self.stream.next().await {
                    Some(Ok(chunk)) => self.buffer.extend_from_slice(&chunk),
                    other => panic!(
                        "stream ended ({other:?}) before {expected:?}; got {:?}",
                        String::from_utf8_lossy(&self.buffer)
                    ),
                }
            }
        })
        .await;
        String::from_utf8(std::mem::take(&mut self.buffer)).unwrap()
    }

    /// Waits for the end of the stream; returns what came before it.
    pub async fn read_to_end(&mut self) -> String {
        within("the held stream to end", async {
            while let Some(chunk) = self.stream.next().await {
                self.buffer.extend_from_slice(&chunk.unwrap());
            }
        })
        .await;
        String::from_utf8(std::mem::take(&mut self.buffer)).unwrap()
    }
}

/// A GET of `path` under way in a task, returned once `channel` has
/// `subscribers` holds (this one included): what is published next
/// answers it.
pub async fn waiting_response(
    pg: &Pushgate,
    path: &str,
    channel: &str,
    subscribers: usize,
) -> tokio::task::JoinHandle<reqwest::Response> {
    let client = pg.client().clone();
    let url = pg.url(path);
    let waiting = tokio::spawn(async move { client.get(url).send().await.unwrap() });
    pg.wait_subscribers(channel, subscribers).await;
    waiting
}
