//! Single node: publications go straight into the local hub.

use std::sync::Arc;

use super::{Backplane, PublishFuture, State};
use crate::hub::Hub;
use crate::hub::message::Publication;

pub struct MemoryBackplane {
    hub: Arc<Hub>,
}

impl MemoryBackplane {
    pub fn new(hub: Arc<Hub>) -> Self {
        Self { hub }
    }
}

impl Backplane for MemoryBackplane {
    fn publish(&self, batch: Vec<Publication>) -> PublishFuture<'_> {
        let receipts = self.hub.publish(&batch);
        Box::pin(std::future::ready(Ok(receipts)))
    }

    fn state(&self) -> State {
        State::Connected
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}
