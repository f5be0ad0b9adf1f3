//! Routing: the compiled snapshot ([`runtime::Runtime`]), its routers and route actions.

pub(crate) mod actions;
pub(crate) mod router;
pub(crate) mod runtime;
