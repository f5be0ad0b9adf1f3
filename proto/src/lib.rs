//! Vane's wire types and the rules every configuration must satisfy.
//!
//! Data flow: a user's YAML/JSON file is read by [`load`] into the protobuf
//! [`config::Config`] (protobuf JSON mapping, snake_case names), checked by [`validate`],
//! and carried as protobuf over gRPC: to the control plane by the admin API
//! ([`admin`]), from it to every node by the discovery stream ([`discovery`]). Both
//! planes link this crate, so a config one accepts the other accepts.

mod format;
mod format_numbers;
pub mod prom;
pub mod text;
pub mod tls;
mod validate;

/// Generated code of the `.proto` files, one module per package.
#[allow(unreachable_pub, missing_debug_implementations, clippy::all)]
mod generated;
mod time;

pub use generated::vane::store::v1 as store;
pub use generated::vane::{admin::v1 as admin, config::v1 as config, discovery::v1 as discovery};

pub use format::{Format, LoadError, config_sha256, load, render};
pub use validate::{
    COMPRESSION_DEFAULT_LEVELS, COMPRESSION_DEFAULT_MIN_LENGTH, COMPRESSION_ENCODINGS, ConfigError, ValidationErrors,
    full_match_regex, hash_api_keys, template_params, validate,
};

pub use generated::FILE_DESCRIPTOR_SET;
pub use time::{timestamp_from_unix_ms, unix_ms_now};

/// Reexported so users of the generated types need not depend on them directly.
pub use pbjson_types;
pub use prost;
