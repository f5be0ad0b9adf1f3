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
mod generated {
    pub mod vane {
        pub mod config {
            pub mod v1 {
                include!(concat!(env!("OUT_DIR"), "/vane.config.v1.rs"));
                include!(concat!(env!("OUT_DIR"), "/vane.config.v1.serde.rs"));
            }
        }
        pub mod admin {
            pub mod v1 {
                include!(concat!(env!("OUT_DIR"), "/vane.admin.v1.rs"));
                include!(concat!(env!("OUT_DIR"), "/vane.admin.v1.serde.rs"));
            }
        }
        pub mod discovery {
            pub mod v1 {
                include!(concat!(env!("OUT_DIR"), "/vane.discovery.v1.rs"));
                include!(concat!(env!("OUT_DIR"), "/vane.discovery.v1.serde.rs"));
            }
        }
        pub mod store {
            pub mod v1 {
                include!(concat!(env!("OUT_DIR"), "/vane.store.v1.rs"));
                include!(concat!(env!("OUT_DIR"), "/vane.store.v1.serde.rs"));
            }
        }
    }
}

pub use generated::vane::store::v1 as store;
pub use generated::vane::{admin::v1 as admin, config::v1 as config, discovery::v1 as discovery};

pub use format::{Format, LoadError, config_sha256, load, render};
pub use validate::{ConfigError, ValidationErrors, full_match_regex, hash_api_keys, template_params, validate};

/// The encoded `FileDescriptorSet` of every Vane proto, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/vane_descriptor.bin"));

/// Reexported so users of the generated types need not depend on them directly.
pub use pbjson_types;
pub use prost;

/// A protobuf timestamp from milliseconds since the Unix epoch.
pub fn timestamp_from_unix_ms(ms: i64) -> pbjson_types::Timestamp {
    pbjson_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn unix_ms_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
