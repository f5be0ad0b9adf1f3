//! Listeners and connection loops: the inline HTTP/1.1 server, the hand-off to hyper,
//! what a request must satisfy to be admitted.

pub(crate) mod admission;
mod bind;
pub(crate) mod body_wait;
pub(crate) mod handoff;
pub(crate) mod inline;
pub(crate) mod listeners;
