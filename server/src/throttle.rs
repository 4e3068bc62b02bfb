//! The core's `max_rate` releaser: one task that sleeps until the soonest
//! throttled lane is due, instead of a timer per subscription per message.

use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::core::Core;

/// Finest step between releases: lanes due within it go out together.
const GRAIN: Duration = Duration::from_millis(1);

/// Releases throttled deliveries as they fall due, for as long as the core runs.
pub async fn run(core: Rc<Core>) {
    let wake = core.hub.borrow().throttle_wake.clone();
    loop {
        let next = core.hub.borrow().next_release();
        match next {
            None => wake.wait().await,
            Some(at) => {
                let wait = at.saturating_duration_since(Instant::now());
                if !wait.is_zero() {
                    monoio::select! {
                        _ = monoio::time::sleep(wait.max(GRAIN)) => {}
                        _ = wake.wait() => continue,
                    }
                }
                core.hub.borrow_mut().release_due(Instant::now());
            }
        }
    }
}
