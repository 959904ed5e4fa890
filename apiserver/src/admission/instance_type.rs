//! Rules for `InstanceType`, and the built-in catalog of common EC2 sizes.

use super::Errors;
use hanul_proto::v1::{InstanceType, InstanceTypeSpec, ObjectMeta};

/// Label on the catalog's types; the server re-creates them at start if they are missing.
pub const BUILTIN_LABEL: &str = "hanul.dev/builtin";

/// The built-in catalog: EC2's general-purpose sizes, vCPU and memory as AWS lists them.
pub fn builtin_catalog() -> Vec<InstanceType> {
    const TYPES: &[(&str, u32, u64, &str)] = &[
        ("t3.nano", 2, 512, "burstable, 2 vCPU, 0.5 GiB"),
        ("t3.micro", 2, 1024, "burstable, 2 vCPU, 1 GiB"),
        ("t3.small", 2, 2048, "burstable, 2 vCPU, 2 GiB"),
        ("t3.medium", 2, 4096, "burstable, 2 vCPU, 4 GiB"),
        ("t3.large", 2, 8192, "burstable, 2 vCPU, 8 GiB"),
        ("t3.xlarge", 4, 16384, "burstable, 4 vCPU, 16 GiB"),
        ("t3.2xlarge", 8, 32768, "burstable, 8 vCPU, 32 GiB"),
        ("m5.large", 2, 8192, "general purpose, 2 vCPU, 8 GiB"),
        ("m5.xlarge", 4, 16384, "general purpose, 4 vCPU, 16 GiB"),
        ("m5.2xlarge", 8, 32768, "general purpose, 8 vCPU, 32 GiB"),
        ("c5.large", 2, 4096, "compute optimized, 2 vCPU, 4 GiB"),
        ("r5.large", 2, 16384, "memory optimized, 2 vCPU, 16 GiB"),
    ];
    TYPES
        .iter()
        .map(|&(name, vcpu, memory_mib, description)| InstanceType {
            metadata: Some(ObjectMeta {
                name: name.into(),
                labels: [(BUILTIN_LABEL.to_string(), "true".to_string())].into(),
                ..Default::default()
            }),
            spec: Some(InstanceTypeSpec {
                vcpu,
                memory_mib,
                pids_limit: 0,
                description: description.into(),
            }),
            status: None,
        })
        .collect()
}

pub(super) fn default(spec: &mut InstanceTypeSpec) {
    if spec.pids_limit == 0 {
        spec.pids_limit = 1024 * spec.vcpu.max(1);
    }
}

pub(super) fn validate(t: &InstanceType, old: Option<&InstanceType>, errs: &mut Errors) {
    let Some(spec) = &t.spec else {
        return errs.add("spec", "required");
    };
    if !(1..=128).contains(&spec.vcpu) {
        errs.add(
            "spec.vcpu",
            format!("{} is out of range: 1 to 128", spec.vcpu),
        );
    }
    if !(16..=1 << 22).contains(&spec.memory_mib) {
        errs.add(
            "spec.memoryMib",
            format!("{} is out of range: 16 to 4194304 MiB", spec.memory_mib),
        );
    }
    if !(16..=1 << 20).contains(&spec.pids_limit) {
        errs.add(
            "spec.pidsLimit",
            format!("{} is out of range: 16 to 1048576", spec.pids_limit),
        );
    }
    let builtin = |t: &InstanceType| {
        t.metadata
            .as_ref()
            .is_some_and(|m| m.labels.contains_key(BUILTIN_LABEL))
    };
    if let Some(old) = old
        && builtin(old)
        && old.spec != t.spec
    {
        errs.add(
            "spec",
            "built-in instance types cannot be changed; create a custom InstanceType",
        );
    }
}
