//! Conversions between protobuf timestamps and `SystemTime`, and the wall clock for the parts
//! that stamp objects (the server, agents, event recorders). Planners take `now` as a parameter.

use pbjson_types::Timestamp;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A protobuf timestamp of `t` (times before 1970 read as 1970).
pub fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// The time a protobuf timestamp names (times before 1970 read as 1970).
pub fn system_time(t: &Timestamp) -> SystemTime {
    if t.seconds < 0 {
        return UNIX_EPOCH;
    }
    UNIX_EPOCH + Duration::new(t.seconds as u64, t.nanos.clamp(0, 999_999_999) as u32)
}

/// Now, as a protobuf timestamp.
pub fn now() -> Timestamp {
    #[allow(clippy::disallowed_methods)] // The one wall clock of the components that stamp objects.
    let t = SystemTime::now();
    timestamp(t)
}

/// A timestamp in RFC 3339 (UTC), as manifests write it: `2026-11-27T10:00:00.5Z`.
pub fn rfc3339(t: &Timestamp) -> String {
    serde_json::to_value(t)
        .ok()
        .and_then(|v| v.as_str().map(|s| s.replace("+00:00", "Z")))
        .unwrap_or_else(|| format!("{}s", t.seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_print_as_rfc3339() {
        let t = Timestamp {
            seconds: 1_764_237_600,
            nanos: 500_000_000,
        };
        assert_eq!(rfc3339(&t), "2025-11-27T10:00:00.500Z");
    }

    #[test]
    fn timestamps_round_trip_and_clamp_before_the_epoch() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123);
        assert_eq!(system_time(&timestamp(t)), t);
        assert_eq!(
            system_time(&Timestamp {
                seconds: -5,
                nanos: 0
            }),
            UNIX_EPOCH
        );
    }
}
