//! Wall-clock time for timestamps the server stamps on objects. The one place that reads it.

use pbjson_types::Timestamp;
use std::time::{SystemTime, UNIX_EPOCH};

/// Now, as a protobuf timestamp.
pub fn now() -> Timestamp {
    #[allow(clippy::disallowed_methods)] // This is the clock.
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}
