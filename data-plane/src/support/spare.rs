//! Header maps kept for reuse, per thread.
//!
//! Every request proxied over HTTP/1.1 builds two header maps (the request's, the upstream
//! response's) and drops both once their heads are written. A request's map, sized for
//! the forwarding headers, is over 1 KiB: past glibc's per-thread cache, so each one went
//! through the allocator's slow path (a tenth of the node's user time in callgrind). The
//! inline server and client take maps from here and give them back cleared, with their
//! memory, once written. A node's requests run on one thread, so a thread-local list needs
//! no lock; other threads simply keep their own.

use std::cell::RefCell;

use http::HeaderMap;

/// At most this many maps are kept per thread (about 1.3 KiB each, so at most ~85 KiB).
const KEEP: usize = 64;
/// Maps grown past this many headers are not kept: a rare large head should not pin its
/// memory.
const MAX_KEPT_CAPACITY: usize = 48;

thread_local! {
    static SPARE: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
}

/// An empty map with room for at least `capacity` headers.
pub(crate) fn take(capacity: usize) -> HeaderMap {
    match SPARE.with_borrow_mut(Vec::pop) {
        Some(mut map) => {
            map.reserve(capacity);
            map
        }
        None => HeaderMap::with_capacity(capacity),
    }
}

/// Gives a map back, once nothing needs its headers any more.
pub(crate) fn give(mut map: HeaderMap) {
    if map.capacity() == 0 || map.capacity() > MAX_KEPT_CAPACITY {
        return;
    }
    // Dropping the values here is what dropping the map would have done.
    map.clear();
    SPARE.with_borrow_mut(|spare| {
        if spare.len() < KEEP {
            spare.push(map);
        }
    });
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn a_given_map_comes_back_empty_with_its_room() {
        let mut map = take(12);
        let room = map.capacity();
        assert!(room >= 12);
        map.insert("x-a", HeaderValue::from_static("1"));
        give(map);
        let again = take(4);
        assert!(again.is_empty(), "handed out cleared");
        assert_eq!(again.capacity(), room, "the memory came back with it");
    }

    #[test]
    fn large_and_empty_maps_are_not_kept() {
        // Drain what other tests on this thread may have left.
        while SPARE.with_borrow_mut(Vec::pop).is_some() {}
        give(HeaderMap::with_capacity(MAX_KEPT_CAPACITY * 2));
        give(HeaderMap::new());
        assert_eq!(SPARE.with_borrow(Vec::len), 0);
        for _ in 0..KEEP + 5 {
            give(HeaderMap::with_capacity(8));
        }
        assert_eq!(SPARE.with_borrow(Vec::len), KEEP, "the list is bounded");
    }
}
