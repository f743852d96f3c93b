//! Tasks that die with their owner.

use tokio::task::JoinHandle;

/// Aborts the task when dropped, so a task owned by an actor's state cannot
/// outlive the actor (a stopped or panicked actor drops its state).
#[derive(Debug)]
pub(crate) struct AbortOnDrop(pub(crate) JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
