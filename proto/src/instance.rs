//! The instance lifecycle in EC2's words, shared by the server, the scheduler and the agents.
//!
//! ```text
//!            start                       stop
//!  pending ─────────▶ running ───────────────▶ stopping ──▶ stopped
//!     ▲                  │                                    │
//!     └──────────────────┼───────────── start ────────────────┘
//!                        │ terminate (from any state but terminated)
//!                        ▼
//!                  shutting-down ──▶ terminated
//! ```

macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $text:literal),* $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),* }

        impl $name {
            /// Every value, in the order the manifest reference lists them.
            pub const ALL: &'static [&'static str] = &[$($text),*];

            /// The manifest spelling.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),* }
            }

            /// Reads the manifest spelling.
            pub fn parse(s: &str) -> Option<$name> {
                match s { $($text => Some($name::$variant),)* _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
pub(crate) use string_enum;

string_enum! {
    /// `status.state` of an instance.
    InstanceState {
        Pending = "pending",
        Running = "running",
        Stopping = "stopping",
        Stopped = "stopped",
        ShuttingDown = "shutting-down",
        Terminated = "terminated",
    }
}

string_enum! {
    /// `spec.state`: what the user wants. `terminated` is final.
    DesiredState { Running = "running", Stopped = "stopped", Terminated = "terminated" }
}

/// Annotation the scheduler puts on a spot instance it reclaims: when its interruption notice
/// ends (RFC 3339). The agent serves it on the metadata endpoint's `spot/instance-action`.
pub const SPOT_INTERRUPTION_ANNOTATION: &str = "hanul.dev/spot-interruption-time";

/// Annotation asking the agent to reboot an instance (as EC2's RebootInstances): its value, a
/// time, is compared with `status.rebootHandled`.
pub const REBOOT_ANNOTATION: &str = "hanul.dev/reboot-requested-at";

string_enum! {
    /// `spec.shutdownBehavior`: what an exit of the process on its own leads to.
    ShutdownBehavior { Stop = "stop", Terminate = "terminate" }
}

string_enum! {
    /// `spec.market`: spot instances may be reclaimed; the others never are.
    Market { OnDemand = "on-demand", Spot = "spot", Reserved = "reserved" }
}

string_enum! {
    /// `spec.ports[].protocol`.
    PortProtocol { Tcp = "tcp", Udp = "udp" }
}

impl InstanceState {
    /// Whether EC2 allows going from `self` to `next`.
    pub fn can_transition_to(self, next: InstanceState) -> bool {
        use InstanceState::*;
        match (self, next) {
            (Terminated, _) => false,
            (_, ShuttingDown) => self != ShuttingDown,
            (ShuttingDown, Terminated) => true,
            (Pending, Running | Stopping | Stopped) => true,
            (Running, Stopping | Pending) => true, // Pending: a reboot relaunches.
            (Stopping, Stopped) => true,
            (Stopped, Pending) => true,
            _ => false,
        }
    }

    /// States in which the instance holds capacity on its node.
    pub fn holds_capacity(self) -> bool {
        matches!(
            self,
            InstanceState::Pending | InstanceState::Running | InstanceState::Stopping
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminated_is_final_and_stopped_restarts_through_pending() {
        use InstanceState::*;
        for s in [
            Pending,
            Running,
            Stopping,
            Stopped,
            ShuttingDown,
            Terminated,
        ] {
            assert!(!Terminated.can_transition_to(s));
        }
        assert!(Stopped.can_transition_to(Pending));
        assert!(!Stopped.can_transition_to(Running));
        assert!(Running.can_transition_to(ShuttingDown));
        assert!(ShuttingDown.can_transition_to(Terminated));
        assert!(!ShuttingDown.can_transition_to(Running));
    }

    #[test]
    fn spellings_read_back() {
        for s in InstanceState::ALL {
            assert_eq!(InstanceState::parse(s).unwrap().as_str(), *s);
        }
        assert_eq!(Market::parse("spot"), Some(Market::Spot));
        assert_eq!(Market::parse("Spot"), None);
    }
}
