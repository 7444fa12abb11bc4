//! Graceful shutdown as the service sees it: once a shutdown begins, new calls are refused
//! with UNAVAILABLE (health says NOT_SERVING, and connections are still accepted so probes get
//! that answer rather than "connection refused"); calls already running finish; when the grace
//! period runs out, the calls still running answer UNAVAILABLE with a message instead of
//! losing their connection.

use std::sync::Arc;

use tokio::sync::watch;
use tonic::Status;

/// Shared by every handler of one server.
#[derive(Debug)]
pub struct Drain {
    stopping: watch::Sender<bool>,
    aborting: watch::Sender<bool>,
    in_flight: watch::Sender<usize>,
}

/// A call being served; the server waits for every one of them before it stops.
#[derive(Debug)]
pub struct InFlight(Arc<Drain>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.send_modify(|n| *n -= 1);
    }
}

impl Default for Drain {
    fn default() -> Self {
        Drain { stopping: watch::channel(false).0, aborting: watch::channel(false).0, in_flight: watch::channel(0).0 }
    }
}

impl Drain {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Admits a new call, or refuses it once a shutdown has begun.
    pub fn admit(self: &Arc<Self>) -> Result<InFlight, Status> {
        // Count first, then look: a shutdown that begins in between still waits for this call.
        self.in_flight.send_modify(|n| *n += 1);
        let call = InFlight(self.clone());
        if *self.stopping.borrow() {
            return Err(Status::unavailable("the server is shutting down; send this request to another replica"));
        }
        Ok(call)
    }

    /// Calls running now.
    pub fn in_flight(&self) -> usize {
        *self.in_flight.borrow()
    }

    /// Whether a shutdown has begun (readiness probes answer "not ready" from then on).
    pub fn stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    /// Stops admitting new calls.
    pub fn begin(&self) {
        self.stopping.send_replace(true);
    }

    /// Resolves once no call is running (after [`Drain::begin`], once the drain is done).
    pub async fn idle(&self) {
        let _ = self.in_flight.subscribe().wait_for(|&n| n == 0).await;
    }

    /// Tells the calls still running that the grace period is over.
    pub fn abort(&self) {
        self.aborting.send_replace(true);
    }

    /// Resolves once [`Drain::abort`] was called.
    pub async fn aborted(&self) {
        let _ = self.aborting.subscribe().wait_for(|&a| a).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn calls_are_counted_and_refused_after_the_shutdown_begins() {
        let drain = Drain::new();
        let call = drain.admit().unwrap();
        assert_eq!(drain.in_flight(), 1);
        drain.begin();
        assert_eq!(drain.admit().unwrap_err().code(), tonic::Code::Unavailable);
        assert_eq!(drain.in_flight(), 1, "a refused call is not left counted");
        let idle = tokio::spawn({
            let drain = drain.clone();
            async move { drain.idle().await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!idle.is_finished());
        drop(call);
        tokio::time::timeout(std::time::Duration::from_secs(1), idle).await.unwrap().unwrap();
    }
}
