//! Giving the memory of a replaced large config back to the system.
//!
//! glibc keeps what a program frees in its arenas and returns pages only from the top of
//! each heap, so a node that compiled a 100k-route config and then swapped in a small one
//! stayed at its peak: measured with a debug build, 385 MB resident after three cycles of
//! 100k routes and a 3-resource config (growing by about 100 MB a cycle), 114 MB after one
//! `malloc_trim(0)`. mimalloc as the global allocator did not help (an idle node makes no
//! allocator calls that would purge), so the node asks glibc directly, once the replaced
//! runtime is really gone (requests in flight may hold it a while), and only after configs
//! large enough to matter: `malloc_trim` walks and locks every arena in turn.
//!
//! This is the workspace's one `unsafe` block (`.ci/run` counts them).

use std::sync::Weak;
use std::time::Duration;

/// Resources (listeners, routes, clusters, ...) from which a replaced config is trimmed.
pub(crate) const TRIM_FROM_RESOURCES: usize = 1_000;
/// How often, and how long, to wait for requests in flight to let go of the old runtime.
const POLL: Duration = Duration::from_millis(50);
const GIVE_UP_AFTER: Duration = Duration::from_secs(120);

/// Trims the allocator once `replaced` (the runtime a swap took out) has been dropped.
pub(crate) fn when_dropped<T: Send + Sync + 'static>(replaced: Weak<T>) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else { return };
    handle.spawn(async move {
        let deadline = tokio::time::Instant::now() + GIVE_UP_AFTER;
        while replaced.strong_count() > 0 {
            if tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(POLL).await;
        }
        let _ = tokio::task::spawn_blocking(release).await;
    });
}

/// Asks the C allocator to return its free pages to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn release() {
    // SAFETY: `malloc_trim` takes no pointer and touches only glibc's own free lists,
    // under the arena locks every allocation also takes.
    let released = unsafe { libc::malloc_trim(0) } != 0;
    tracing::debug!(released, "allocator trimmed after a large config was replaced");
}

/// Elsewhere (musl, macOS) the allocators return large frees themselves.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release() {}
