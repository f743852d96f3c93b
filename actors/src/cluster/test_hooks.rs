//! Pause points for tests of races inside a worker (compiled for unit tests
//! only): a test installs a hook for a worker name, and the worker awaits it
//! at named points, so a test can hold a worker exactly inside a window
//! instead of hoping a sleep lands there.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;

/// Called with the point's name; the worker waits for the future.
pub(crate) type Hook = Arc<dyn Fn(&'static str) -> BoxFuture<'static, ()> + Send + Sync>;

static HOOKS: Mutex<Option<HashMap<String, Hook>>> = Mutex::new(None);

/// Installs `hook` for the worker named `worker`.
pub(crate) fn install(worker: &str, hook: Hook) {
    let mut hooks = HOOKS.lock().unwrap_or_else(|e| e.into_inner());
    hooks
        .get_or_insert_with(HashMap::new)
        .insert(worker.to_string(), hook);
}

/// Waits for the hook of `worker` at `point` (at once without one).
pub(crate) async fn at(worker: &str, point: &'static str) {
    let hook = {
        let hooks = HOOKS.lock().unwrap_or_else(|e| e.into_inner());
        hooks.as_ref().and_then(|h| h.get(worker).cloned())
    };
    if let Some(hook) = hook {
        hook(point).await;
    }
}
