//! What the machine offers: CPUs, memory and kernel, read from `/proc`.

use crate::error::{Error, Result};

/// CPU in thousandths of a vCPU, memory in MiB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capacity {
    pub cpu_millis: u32,
    pub memory_mib: u64,
}

/// The machine's CPUs (as the scheduler counts them) and total memory.
pub fn capacity() -> Result<Capacity> {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as u32;
    let meminfo = std::fs::read_to_string("/proc/meminfo").map_err(|source| Error::Read {
        what: "memory size",
        path: "/proc/meminfo".into(),
        source,
    })?;
    Ok(Capacity {
        cpu_millis: cpus * 1000,
        memory_mib: parse_mem_total_mib(&meminfo).unwrap_or(0),
    })
}

fn parse_mem_total_mib(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// The kernel release, for `hanul get nodes -o wide`.
pub fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_total_is_read_in_mib() {
        let text = "MemTotal:       24576000 kB\nMemFree:        1 kB\n";
        assert_eq!(parse_mem_total_mib(text), Some(24000));
        assert_eq!(parse_mem_total_mib("nothing"), None);
    }

    #[test]
    fn this_machine_has_cpus_and_memory() {
        let c = capacity().unwrap();
        assert!(c.cpu_millis >= 1000 && c.memory_mib > 0, "{c:?}");
    }
}
