//! HTTP protocol only: body types, header hygiene, value templates, the inline HTTP/1.1
//! client codec. Knows no route, cluster or pool.

pub(crate) mod body;
pub(crate) mod h1;
pub(crate) mod headers;
pub(crate) mod idle;
pub(crate) mod replay;
pub(crate) mod template;
