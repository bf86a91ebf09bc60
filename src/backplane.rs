//! The backplane relays publications between nodes and into the local hub.
//! Every publish travels through it, even on one node, where [`memory`]
//! loops straight back: one message path to test.
//!
//! It knows no sessions, transports or HTTP.

pub mod memory;

use std::future::Future;
use std::pin::Pin;

use crate::hub::message::{Publication, Receipt};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("backplane unavailable: {0}")]
    Unavailable(String),
}

pub type PublishFuture<'a> = Pin<Box<dyn Future<Output = Result<Vec<Receipt>, Error>> + Send + 'a>>;

pub trait Backplane: Send + Sync + 'static {
    /// Publishes `batch` in order; receipts report this node's subscribers.
    fn publish(&self, batch: Vec<Publication>) -> PublishFuture<'_>;

    /// Connected and able to publish (`/readyz`).
    fn is_ready(&self) -> bool;

    /// A short name for logs and readiness output.
    fn name(&self) -> &'static str;
}
