//! Capped exponential backoff with jitter for reconnects.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

const FIRST: Duration = Duration::from_millis(100);
const CAP: Duration = Duration::from_secs(5);

/// The wait before reconnect attempt `attempt` (0-based): 100 ms doubling
/// to 5 s, each ±25% so nodes that lost the backplane together do not
/// come back in step.
pub(super) fn backoff(attempt: u32) -> Duration {
    let base = FIRST.saturating_mul(1 << attempt.min(16)).min(CAP);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(attempt);
    let unit = (h.finish() % 1000) as f64 / 1000.0; // [0, 1)
    base.mul_f64(0.75 + unit * 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_cap_with_jitter() {
        for attempt in 0..40 {
            let d = backoff(attempt);
            let base = FIRST.saturating_mul(1 << attempt.min(16)).min(CAP);
            assert!(
                d >= base.mul_f64(0.75) && d <= base.mul_f64(1.25),
                "{attempt}: {d:?}"
            );
        }
        assert!(backoff(30) <= CAP.mul_f64(1.25));
    }
}
