//! Conditions and timestamps as the scheduler and the node lifecycle controller write them.

use hanul_proto::v1::Condition;

use std::time::SystemTime;

/// `Condition.status` values.
pub const TRUE: &str = "True";
pub const FALSE: &str = "False";
pub const UNKNOWN: &str = "Unknown";

/// The condition of type `ty`, if any.
pub fn find<'a>(conditions: &'a [Condition], ty: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.r#type == ty)
}

/// Whether the condition of type `ty` is there and `True` (a node's `Ready`).
pub fn is_true(conditions: &[Condition], ty: &str) -> bool {
    find(conditions, ty).is_some_and(|c| c.status == TRUE)
}

/// Sets the condition of type `ty`, keeping its `lastTransitionTime` unless its status changes.
/// Returns whether anything changed.
pub fn set(
    conditions: &mut Vec<Condition>,
    ty: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: SystemTime,
) -> bool {
    match conditions.iter_mut().find(|c| c.r#type == ty) {
        Some(c) if c.status == status && c.reason == reason && c.message == message => false,
        Some(c) => {
            if c.status != status {
                c.last_transition_time = Some(timestamp(now));
            }
            c.status = status.into();
            c.reason = reason.into();
            c.message = message.into();
            true
        }
        None => {
            conditions.push(Condition {
                r#type: ty.into(),
                status: status.into(),
                reason: reason.into(),
                message: message.into(),
                last_transition_time: Some(timestamp(now)),
            });
            true
        }
    }
}

pub use hanul_proto::time::{system_time, timestamp};

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn the_transition_time_moves_only_when_the_status_changes() {
        let t0 = UNIX_EPOCH + Duration::from_secs(100);
        let t1 = t0 + Duration::from_secs(5);
        let mut c = Vec::new();
        assert!(set(&mut c, "Ready", TRUE, "Up", "", t0));
        assert!(!set(&mut c, "Ready", TRUE, "Up", "", t1));
        assert!(set(&mut c, "Ready", TRUE, "Up", "again", t1));
        assert_eq!(c[0].last_transition_time, Some(timestamp(t0)));
        assert!(set(&mut c, "Ready", UNKNOWN, "Gone", "", t1));
        assert_eq!(c[0].last_transition_time, Some(timestamp(t1)));
        assert_eq!(system_time(&timestamp(t1)), t1);
    }
}
