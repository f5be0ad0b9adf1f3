//! Small utilities every layer may use; imports nothing of the crate.

pub(crate) mod spare;

use std::time::Duration;

use vane_proto::pbjson_types;

/// An error of any kind, as hyper and tower pass them.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A protobuf duration as a std one, `default` when unset or out of range.
pub(crate) fn duration_or(d: Option<&pbjson_types::Duration>, default: Duration) -> Duration {
    d.and_then(|d| {
        let secs = u64::try_from(d.seconds).ok()?;
        let nanos = u32::try_from(d.nanos).ok()?;
        Some(Duration::new(secs, nanos))
    })
    .filter(|d| !d.is_zero())
    .unwrap_or(default)
}
