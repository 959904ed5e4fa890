//! The kinds hanul serves and generic access to any object's metadata, spec and status.
//!
//! The store and the generic object service handle every kind the same way, so each kind
//! registers here once: its manifest name, plural and short names (for the CLI), and how to
//! reach its parts inside the [`Object`] envelope. Adding a kind is one line in `kinds!`.

use crate::v1::{Object, ObjectMeta, object::Resource};
use prost::Message;

macro_rules! kinds {
    ($( $variant:ident $(as $name:literal)? { plural: $plural:literal, short: [$($short:literal),*], status: $has_status:tt } ),* $(,)?) => {
        /// A kind of object, as named in manifests (`kind: Instance`).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Kind { $($variant),* }

        impl Kind {
            /// Every kind, in a stable order.
            pub const ALL: &'static [Kind] = &[$(Kind::$variant),*];

            /// The manifest name: `Instance`.
            pub fn as_str(self) -> &'static str {
                match self { $(Kind::$variant => kind_name!($variant $(, $name)?)),* }
            }

            /// The lowercase plural: `instances`.
            pub fn plural(self) -> &'static str {
                match self { $(Kind::$variant => $plural),* }
            }

            /// Short names the CLI accepts: `i`.
            pub fn short_names(self) -> &'static [&'static str] {
                match self { $(Kind::$variant => &[$($short),*]),* }
            }

            /// Whether objects of this kind have a status written by controllers or agents.
            pub fn has_status(self) -> bool {
                match self { $(Kind::$variant => $has_status),* }
            }
        }

        impl Object {
            /// The object's kind; `None` for an empty envelope.
            pub fn kind(&self) -> Option<Kind> {
                match &self.resource { $(Some(Resource::$variant(_)) => Some(Kind::$variant),)* None => None }
            }

            /// The object's metadata, if the envelope is set and the metadata present.
            pub fn metadata(&self) -> Option<&ObjectMeta> {
                match &self.resource { $(Some(Resource::$variant(o)) => o.metadata.as_ref(),)* None => None }
            }

            /// The object's metadata, created empty when absent. Panics on an empty envelope,
            /// which the server refuses before any caller gets here.
            pub fn metadata_mut(&mut self) -> &mut ObjectMeta {
                match &mut self.resource {
                    $(Some(Resource::$variant(o)) => o.metadata.get_or_insert_with(Default::default),)*
                    None => panic!("metadata_mut on an empty Object envelope"),
                }
            }

            /// The encoded spec: what a change of bumps `generation`.
            pub fn spec_bytes(&self) -> Vec<u8> {
                match &self.resource { $(Some(Resource::$variant(o)) => spec_of!(o, $has_status),)* None => Vec::new() }
            }

            /// The encoded status.
            pub fn status_bytes(&self) -> Vec<u8> {
                match &self.resource { $(Some(Resource::$variant(o)) => status_of!(o, $has_status),)* None => Vec::new() }
            }

            /// Replaces this object's status with `from`'s (same kind), leaving spec and metadata.
            pub fn set_status_from(&mut self, from: &Object) {
                match (&mut self.resource, &from.resource) {
                    $((Some(Resource::$variant(to)), Some(Resource::$variant(from))) => copy_status!(to, from, $has_status),)*
                    _ => {}
                }
            }

            /// Replaces this object's spec with `from`'s (same kind), leaving status and metadata.
            pub fn set_spec_from(&mut self, from: &Object) {
                match (&mut self.resource, &from.resource) {
                    $((Some(Resource::$variant(to)), Some(Resource::$variant(from))) => copy_spec!(to, from, $has_status),)*
                    _ => {}
                }
            }

            /// Leaves only the kind and the metadata: spec and status are cleared (what a
            /// metadata-only list or watch sends).
            pub fn keep_only_metadata(&mut self) {
                match &mut self.resource {
                    $(Some(Resource::$variant(o)) => {
                        let metadata = o.metadata.take();
                        *o = Default::default();
                        o.metadata = metadata;
                    })*
                    None => {}
                }
            }

            /// Clears the status (what a user's create or apply may not set).
            pub fn clear_status(&mut self) {
                match &mut self.resource {
                    $(Some(Resource::$variant(o)) => clear_status!(o, $has_status),)*
                    None => {}
                }
            }
        }
    };
}

/// A kind's manifest name: the type's name, unless the API spells it otherwise (`DBCluster`
/// for prost's `DbCluster`).
macro_rules! kind_name {
    ($variant:ident) => {
        stringify!($variant)
    };
    ($variant:ident, $name:literal) => {
        $name
    };
}

macro_rules! spec_of {
    ($o:ident, true) => {
        $o.spec
            .as_ref()
            .map(Message::encode_to_vec)
            .unwrap_or_default()
    };
    // Kinds without spec/status (Event): everything but metadata is the "spec".
    ($o:ident, false) => {{
        let mut c = $o.clone();
        c.metadata = None;
        c.encode_to_vec()
    }};
}
macro_rules! status_of {
    ($o:ident, true) => {
        $o.status
            .as_ref()
            .map(Message::encode_to_vec)
            .unwrap_or_default()
    };
    ($o:ident, false) => {{
        let _ = $o;
        Vec::new()
    }};
}
macro_rules! copy_status {
    ($to:ident, $from:ident, true) => {
        $to.status = $from.status.clone()
    };
    ($to:ident, $from:ident, false) => {{
        let _ = ($to, $from);
    }};
}
macro_rules! copy_spec {
    ($to:ident, $from:ident, true) => {
        $to.spec = $from.spec.clone()
    };
    ($to:ident, $from:ident, false) => {{
        let meta = $to.metadata.take();
        *$to = $from.clone();
        $to.metadata = meta;
    }};
}
macro_rules! clear_status {
    ($o:ident, true) => {
        $o.status = None
    };
    ($o:ident, false) => {{
        let _ = $o;
    }};
}

kinds! {
    Node { plural: "nodes", short: ["no"], status: true },
    InstanceType { plural: "instancetypes", short: ["it", "instance-types"], status: true },
    Image { plural: "images", short: ["img", "ami"], status: true },
    Instance { plural: "instances", short: ["i", "inst", "ec2"], status: true },
    Volume { plural: "volumes", short: ["vol", "ebs"], status: true },
    Event { plural: "events", short: ["ev"], status: false },
    TargetGroup { plural: "targetgroups", short: ["tg", "target-groups"], status: true },
    LoadBalancer { plural: "loadbalancers", short: ["lb", "elb", "alb", "nlb", "load-balancers"], status: true },
    AutoScalingGroup { plural: "autoscalinggroups", short: ["asg", "asgs", "auto-scaling-groups"], status: true },
    LaunchTemplate { plural: "launchtemplates", short: ["lt", "launch-templates"], status: true },
    DbCluster as "DBCluster" { plural: "dbclusters", short: ["db", "dbc", "db-clusters"], status: true },
    DbInstance as "DBInstance" { plural: "dbinstances", short: ["dbi", "db-instances"], status: true },
    DbParameterGroup as "DBParameterGroup" { plural: "dbparametergroups", short: ["dbpg", "db-parameter-groups"], status: true },
    DbSnapshot as "DBSnapshot" { plural: "dbsnapshots", short: ["dbsnap", "db-snapshots"], status: true },
    Secret { plural: "secrets", short: ["sec"], status: true },
    DbClusterAutomatedBackup as "DBClusterAutomatedBackup" { plural: "dbclusterautomatedbackups", short: ["dbab", "db-cluster-automated-backups"], status: true },
}

impl Kind {
    /// Finds a kind by manifest name, plural, singular lowercase or short name, as kubectl does.
    pub fn lookup(name: &str) -> Option<Kind> {
        let lower = name.to_ascii_lowercase();
        Kind::ALL.iter().copied().find(|k| {
            k.as_str() == name
                || k.as_str().to_ascii_lowercase() == lower
                || k.plural() == lower
                || k.short_names().contains(&lower.as_str())
        })
    }

    /// Every name the CLI accepts for a kind, for error messages.
    pub fn known_names() -> String {
        Kind::ALL
            .iter()
            .map(|k| k.plural())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kind::lookup(s).ok_or_else(|| format!("unknown kind {s:?}; known: {}", Kind::known_names()))
    }
}

impl Object {
    /// The object's name, or "" when unset.
    pub fn name(&self) -> &str {
        self.metadata().map(|m| m.name.as_str()).unwrap_or("")
    }

    /// `Kind/name`, as the CLI prints it.
    pub fn key(&self) -> String {
        format!(
            "{}/{}",
            self.kind().map(Kind::as_str).unwrap_or("?"),
            self.name()
        )
    }

    /// The store revision of the object's last write.
    pub fn resource_version(&self) -> u64 {
        self.metadata().map(|m| m.resource_version).unwrap_or(0)
    }

    /// The instance inside, if the object is one.
    pub fn as_instance(&self) -> Option<&crate::v1::Instance> {
        match &self.resource {
            Some(Resource::Instance(i)) => Some(i),
            _ => None,
        }
    }

    /// The instance inside, mutable, if the object is one.
    pub fn as_instance_mut(&mut self) -> Option<&mut crate::v1::Instance> {
        match &mut self.resource {
            Some(Resource::Instance(i)) => Some(i),
            _ => None,
        }
    }
}

/// Wraps a typed object into the envelope: `Object::from(instance)`.
macro_rules! into_object {
    ($($variant:ident),*) => {$(
        impl From<crate::v1::$variant> for Object {
            fn from(o: crate::v1::$variant) -> Self { Object { resource: Some(Resource::$variant(o)) } }
        }
    )*};
}
into_object!(
    Node,
    InstanceType,
    Image,
    Instance,
    Volume,
    Event,
    TargetGroup,
    LoadBalancer,
    AutoScalingGroup,
    LaunchTemplate,
    DbCluster,
    DbInstance,
    DbParameterGroup,
    DbSnapshot,
    Secret,
    DbClusterAutomatedBackup
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{Instance, InstanceSpec, InstanceStatus};

    #[test]
    fn kinds_are_found_by_every_name_kubectl_users_type() {
        assert_eq!(Kind::lookup("Instance"), Some(Kind::Instance));
        assert_eq!(Kind::lookup("instances"), Some(Kind::Instance));
        assert_eq!(Kind::lookup("instance"), Some(Kind::Instance));
        assert_eq!(Kind::lookup("i"), Some(Kind::Instance));
        assert_eq!(Kind::lookup("instancetypes"), Some(Kind::InstanceType));
        assert_eq!(Kind::lookup("nope"), None);
    }

    #[test]
    fn spec_and_status_are_copied_independently() {
        let mut a: Object = Instance {
            metadata: Some(ObjectMeta {
                name: "a".into(),
                ..Default::default()
            }),
            spec: Some(InstanceSpec {
                image: "one".into(),
                ..Default::default()
            }),
            status: Some(InstanceStatus {
                state: "running".into(),
                ..Default::default()
            }),
        }
        .into();
        let b: Object = Instance {
            metadata: None,
            spec: Some(InstanceSpec {
                image: "two".into(),
                ..Default::default()
            }),
            status: None,
        }
        .into();
        let before = a.status_bytes();
        a.set_spec_from(&b);
        assert_eq!(a.spec_bytes(), b.spec_bytes());
        assert_eq!(a.status_bytes(), before);
        a.set_status_from(&b);
        assert!(a.status_bytes().is_empty());
        assert_eq!(a.name(), "a");
    }

    #[test]
    fn keeping_only_metadata_clears_spec_and_status_and_keeps_the_kind() {
        let mut a: Object = Instance {
            metadata: Some(ObjectMeta {
                name: "a".into(),
                uid: "u1".into(),
                ..Default::default()
            }),
            spec: Some(InstanceSpec {
                image: "one".into(),
                ..Default::default()
            }),
            status: Some(InstanceStatus {
                state: "running".into(),
                ..Default::default()
            }),
        }
        .into();
        a.keep_only_metadata();
        assert_eq!(a.kind(), Some(Kind::Instance));
        assert_eq!(a.name(), "a");
        assert_eq!(a.metadata().map(|m| m.uid.as_str()), Some("u1"));
        assert!(a.spec_bytes().is_empty());
        assert!(a.status_bytes().is_empty());
        // Kinds without spec and status (Event) keep their metadata too.
        let mut e: Object = crate::v1::Event {
            metadata: Some(ObjectMeta {
                name: "e".into(),
                ..Default::default()
            }),
            reason: "Started".into(),
            ..Default::default()
        }
        .into();
        e.keep_only_metadata();
        assert_eq!(e.name(), "e");
        assert!(e.spec_bytes().is_empty());
    }

    #[test]
    fn retained_automated_backups_are_a_kind_with_rds_and_short_names() {
        let k = Kind::DbClusterAutomatedBackup;
        assert_eq!(k.as_str(), "DBClusterAutomatedBackup");
        for name in [
            "dbab",
            "dbclusterautomatedbackups",
            "dbclusterautomatedbackup",
            "DBClusterAutomatedBackup",
            "db-cluster-automated-backups",
        ] {
            assert_eq!(Kind::lookup(name), Some(k), "{name}");
        }
        assert!(k.has_status());
        let o = crate::manifest::parse(
            "t.yaml",
            "apiVersion: hanul/v1\nkind: DBClusterAutomatedBackup\nmetadata: {name: orders}\nspec: {dbCluster: orders, dbClusterResourceId: u-1}\n",
        )
        .unwrap();
        assert_eq!(o[0].object.kind(), Some(k));
    }
}
