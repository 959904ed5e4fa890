//! The weekly maintenance window (RDS's `PreferredMaintenanceWindow`): static parameter
//! changes that wait for a reboot are applied in it, by the same reboot `hanul db reboot`
//! asks for (a request id in the reboot annotation, `maintenance-<window start>`, so that one
//! window reboots once).

use hanul_proto::db::{
    DEFAULT_MAINTENANCE_WINDOW, PARAMS_PENDING_REBOOT, PHASE_AVAILABLE, weekly_window_at,
};
use hanul_proto::v1::{DbClusterSpec, DbClusterStatus};

/// The reboot request to write now, if the cluster waits for one and its window is open.
/// `requested` is the reboot annotation's value.
pub fn reboot_due(
    spec: &DbClusterSpec,
    status: &DbClusterStatus,
    requested: Option<&str>,
    now: i64,
) -> Option<String> {
    if status.phase != PHASE_AVAILABLE || status.parameter_apply_status != PARAMS_PENDING_REBOOT {
        return None;
    }
    let window = spec
        .maintenance
        .as_ref()
        .map(|m| m.preferred_window.as_str())
        .filter(|w| !w.is_empty())
        .unwrap_or(DEFAULT_MAINTENANCE_WINDOW);
    let (opens, open) = weekly_window_at(window, now);
    let request = format!("maintenance-{opens}");
    (open && status.reboot_handled != request && requested != Some(request.as_str()))
        .then_some(request)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hanul_proto::v1::MaintenanceSettings;

    /// Sunday 2026-11-29 05:10 UTC.
    const SUNDAY_0510: i64 = 1_795_910_400 + 5 * 3600 + 600;

    #[test]
    fn pending_reboots_are_applied_once_per_window() {
        let spec = DbClusterSpec {
            maintenance: Some(MaintenanceSettings {
                preferred_window: "sun:05:00-sun:05:30".into(),
            }),
            ..Default::default()
        };
        let mut status = DbClusterStatus {
            phase: PHASE_AVAILABLE.into(),
            parameter_apply_status: PARAMS_PENDING_REBOOT.into(),
            ..Default::default()
        };
        let request = reboot_due(&spec, &status, None, SUNDAY_0510).unwrap();
        assert_eq!(request, format!("maintenance-{}", SUNDAY_0510 - 600));
        // Asked already, or done already: not again in this window.
        assert_eq!(
            reboot_due(&spec, &status, Some(&request), SUNDAY_0510),
            None
        );
        status.reboot_handled = request.clone();
        assert_eq!(reboot_due(&spec, &status, None, SUNDAY_0510 + 60), None);
        // Outside the window, or nothing pending, or not available: nothing.
        status.reboot_handled.clear();
        assert_eq!(reboot_due(&spec, &status, None, SUNDAY_0510 + 3600), None);
        status.parameter_apply_status = "in-sync".into();
        assert_eq!(reboot_due(&spec, &status, None, SUNDAY_0510), None);
        status.parameter_apply_status = PARAMS_PENDING_REBOOT.into();
        status.phase = "failing-over".into();
        assert_eq!(reboot_due(&spec, &status, None, SUNDAY_0510), None);
        // No window given: the default one (Sunday 05:00-05:30 too).
        status.phase = PHASE_AVAILABLE.into();
        assert!(reboot_due(&DbClusterSpec::default(), &status, None, SUNDAY_0510).is_some());
    }
}
