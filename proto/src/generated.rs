//! Generated code of the `.proto` files, one module per package, and their descriptor
//! set. A leaf: every other module of the crate builds on these types.

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

/// The encoded `FileDescriptorSet` of every Vane proto, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/vane_descriptor.bin"));
