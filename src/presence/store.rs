//! Presence shared by every node, beside the [`Backplane`](crate::backplane)
//! (a sibling trait: join and leave events themselves still travel as
//! publications through the backplane).
//!
//! Every store keeps one record per channel with one entry per (node,
//! sub) and one anonymous count per node, each with an expiry the node
//! pushes forward on every refresh, so a node that dies stops counting
//! within 2 × `presence.refresh`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::Snapshot;
use crate::backplane::Error;
use crate::hub::message::ChannelName;

pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, Error>> + Send + 'a>>;

/// One user of a channel on this node, as a join records it.
#[derive(Debug, Clone, Copy)]
pub struct Joining<'a> {
    pub sub: &'a str,
    /// This node's connections of the user in the channel.
    pub connections: u32,
    /// When the user's first connection here joined, in Unix ms.
    pub since: u64,
}

/// One channel's entries of this node, for a refresh.
#[derive(Debug, Clone)]
pub struct ChannelEntries {
    pub channel: ChannelName,
    /// (sub, connections, since in Unix ms).
    pub members: Vec<(Arc<str>, u32, u64)>,
    pub anonymous: u32,
    /// A local route announces joins and leaves here.
    pub events: bool,
}

pub trait PresenceStore: Send + Sync + 'static {
    /// Records the member on this node; `true` when no live entry of
    /// another node had its sub (the user joined).
    fn join<'a>(&'a self, channel: &'a ChannelName, member: Joining<'a>) -> StoreFuture<'a, bool>;

    /// Removes this node's entry of `sub`; `true` when no live entry of
    /// another node has it (the user left).
    fn leave<'a>(&'a self, channel: &'a ChannelName, sub: &'a str) -> StoreFuture<'a, bool>;

    /// Rewrites this node's entries with a fresh expiry and removes the
    /// expired entries of other nodes on these channels; returns the
    /// users that left by it (no live entry remains).
    fn refresh(
        &self,
        entries: Vec<ChannelEntries>,
    ) -> StoreFuture<'_, Vec<(ChannelName, Arc<str>)>> {
        Box::pin(async move {
            let mut gone = Vec::new();
            for entry in entries {
                let left = self.refresh_channel(&entry).await?;
                gone.extend(
                    left.into_iter()
                        .map(|s| (entry.channel.clone(), Arc::from(s))),
                );
            }
            Ok(gone)
        })
    }

    /// [`refresh`](Self::refresh) of one channel: returns the subs that
    /// left by it.
    fn refresh_channel<'a>(&'a self, entry: &'a ChannelEntries) -> StoreFuture<'a, Vec<String>>;

    /// Every node's live entries of `channel`, merged per sub.
    fn snapshot<'a>(&'a self, channel: &'a ChannelName) -> StoreFuture<'a, Snapshot>;
}
