//! The DB endpoints' kernel path: the nftables rules that send the connections this host
//! opens to one of its endpoints straight to the target member (DNAT on the output hook), so
//! that local clients skip the userspace proxy, as kube-proxy's iptables mode skips its
//! userspace one. The proxy keeps listening: it serves remote clients, and everyone when the
//! kernel path is off. Pure: the rules are rendered from the proxy's own [`Config`] (built by
//! [`super::endpoints::resolve`], which alone decides the targets), so the two paths never
//! disagree on who may be reached; [`super::nft`] runs them.
//!
//! One table per agent, `ip hanul_db_<node>` (several agents may share a kernel, as in the
//! tests), replaced whole by every script in one transaction:
//!
//! ```text
//!  output (nat, -100)  steer:  ip daddr . tcp dport vmap @endpoints ─▶ ep_<port>
//!                      ep_<port>:  one target: ct mark set M dnat to T
//!                                  several:    numgen random mod N vmap { i : goto ep_<port>_<i> }
//!  output, input (filter, 0)  fence_out, fence_in:
//!      ct mark is ours (0xdb, owner) and (original daddr . original dport . ct mark) ∉ @live
//!        ─▶ reject with tcp reset
//! ```
//!
//! Fencing, as strong as the proxy's:
//! - Every connection steered to a target carries a ct mark `0xdb << 24 | owner << 8 | tag`:
//!   `0xdb` says it is hanul's, `owner` is this agent's (from its node name, so that it
//!   survives a restart), `tag` is the (endpoint, target) pair's, given anew whenever a target
//!   joins an endpoint. `@live` holds the current pairs; a packet of a connection whose pair is
//!   no longer there (the writer changed, a reader left, the agent stopped refreshing) is
//!   answered with a reset, in both directions, so that no client keeps talking to a former
//!   writer. Resets themselves pass, or the client would never hear one.
//! - Kernel state outlives a SIGKILLed agent, unlike a proxy's socket: `@endpoints` and `@live`
//!   elements expire after [`timeout_for`] the cluster's lease (half of it, 1–5 s) unless the
//!   agent renews them, so a dead agent's rules stop steering, and its connections die, before
//!   the controller may promote another writer. Only the fence chains stay, and they reset
//!   whatever this agent steered.
//! - The agent also resets the local clients of an endpoint at once when it loses a target
//!   (and when it first serves it in a run), as the proxy closes them: see [`Marks::update`].
//!
//! IPv4 only: an endpoint bound elsewhere is left to the proxy, and so is one whose targets are
//! not all IPv4 addresses (or not loopback ones behind a loopback endpoint, which a packet from
//! 127.0.0.1 could not reach).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddrV4};
use std::time::Duration;

use hanul_lb::config::Config;

/// The high byte of every conntrack mark the DB endpoints set (`0xdb`: recognisable in
/// `conntrack -L`).
pub const MARK_HANUL: u32 = 0xdb00_0000;
/// The part of a mark that says whose it is: hanul's byte and the owner.
const OWNER_MASK: u32 = 0xffff_ff00;
/// Bounds of the rules' life without a refresh.
pub const MIN_TIMEOUT: Duration = Duration::from_secs(1);
pub const MAX_TIMEOUT: Duration = Duration::from_secs(5);
/// How many refreshes fit in one timeout: a late one or two still find the rules in place.
const REFRESHES_PER_TIMEOUT: u32 = 3;
/// The longest table name nftables takes, less a margin.
const MAX_TABLE_NAME: usize = 240;

/// This node's table: `hanul_db_<node>`. Node names (lowercase letters, digits, `-`, `.`) are
/// nftables identifiers as they are; anything else becomes `_`.
pub fn table_name(node: &str) -> String {
    let mut name = String::from("hanul_db_");
    name.extend(node.chars().map(|c| {
        if c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_') {
            c
        } else {
            '_'
        }
    }));
    name.truncate(MAX_TABLE_NAME);
    name
}

/// How long steering rules live without a refresh for a writer's lease of `lease`: half of it,
/// within [`MIN_TIMEOUT`]..=[`MAX_TIMEOUT`]. Shorter than the lease, so that a dead agent's rules
/// are gone before another writer may be promoted.
pub fn timeout_for(lease: Duration) -> Duration {
    (lease / 2).clamp(MIN_TIMEOUT, MAX_TIMEOUT)
}

/// One target of an endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The member (for the rules' comments).
    pub member: String,
    pub address: SocketAddrV4,
}

/// One endpoint as the kernel path serves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// The proxy's group: `db/<cluster>/writer` or `.../reader`.
    pub name: String,
    /// Where clients connect.
    pub address: SocketAddrV4,
    /// Empty when the kernel does not steer it: no target (a failover), or one it cannot reach
    /// (then the proxy serves local clients too).
    pub targets: Vec<Target>,
    /// How long its rules live without a refresh ([`timeout_for`] its cluster's lease).
    pub timeout: Duration,
}

/// The endpoints of `config` (the proxy's, from [`super::endpoints::resolve`]). `leases`: the
/// writer's lease by load balancer name (`db/<cluster>`); a missing one is the default.
pub fn endpoints(config: &Config, leases: &HashMap<String, Duration>) -> Vec<Endpoint> {
    let default_lease = Duration::from_secs(hanul_proto::db::DEFAULT_LEASE_SECONDS.into());
    config
        .listeners
        .iter()
        .filter_map(|l| {
            // A specific IPv4 address: an unspecified one would also catch 127.0.0.1, from
            // which a remote target cannot be reached.
            let IpAddr::V4(bind) = l.bind else {
                return None;
            };
            if bind.is_unspecified() {
                return None;
            }
            let group = config.groups.iter().find(|g| g.name == l.default_group)?;
            let targets: Option<Vec<Target>> = group
                .targets
                .iter()
                .map(|t| {
                    let address: SocketAddrV4 = t.address.parse().ok()?;
                    (!bind.is_loopback() || address.ip().is_loopback()).then(|| Target {
                        member: t.instance.clone(),
                        address,
                    })
                })
                .collect();
            Some(Endpoint {
                name: l.default_group.clone(),
                address: SocketAddrV4::new(bind, l.port),
                targets: targets.unwrap_or_default(),
                timeout: timeout_for(
                    leases
                        .get(&l.load_balancer)
                        .copied()
                        .unwrap_or(default_lease),
                ),
            })
        })
        .collect()
}

/// How often the rules of `endpoints` must be renewed; `None` when nothing expires.
pub fn refresh_interval(endpoints: &[Endpoint]) -> Option<Duration> {
    endpoints
        .iter()
        .filter(|e| !e.targets.is_empty())
        .map(|e| e.timeout / REFRESHES_PER_TIMEOUT)
        .min()
}

/// 32-bit FNV-1a: stable across builds (the owner must survive an upgrade of the agent).
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// The tags of one endpoint's targets.
#[derive(Debug, Default)]
struct Tags {
    by_target: BTreeMap<SocketAddrV4, u8>,
    /// The last tag given: the next one follows it, so that a tag comes back only after 255
    /// others.
    last: u8,
}

/// The marks given to this agent's (endpoint, target) pairs, and what changed.
#[derive(Debug)]
pub struct Marks {
    owner: u32,
    endpoints: HashMap<SocketAddrV4, Tags>,
    /// Where the first tag of an endpoint starts: from the run, so that a new run does not
    /// give a stale connection's tag to another target.
    seed: u8,
}

impl Marks {
    /// `seed`: a value of this run (random).
    pub fn new(node: &str, seed: u8) -> Marks {
        let h = fnv1a(node.as_bytes());
        Marks {
            owner: MARK_HANUL | (((h >> 16) ^ (h & 0xffff)) << 8),
            endpoints: HashMap::new(),
            seed,
        }
    }

    /// `0xdb` and the owner, the tag bits zero: every mark of this agent is this plus a tag.
    pub fn owner(&self) -> u32 {
        self.owner
    }

    /// The mark of a connection from `endpoint` to `target`, if it is one of them.
    pub fn mark(&self, endpoint: SocketAddrV4, target: SocketAddrV4) -> Option<u32> {
        let tag = self.endpoints.get(&endpoint)?.by_target.get(&target)?;
        Some(self.owner | u32::from(*tag))
    }

    /// Gives a tag to every new (endpoint, target) pair of `endpoints` and retires the pairs
    /// that are gone. Returns the endpoints whose local clients are to be reset now, as the
    /// proxy closes its connections: those that lost a target (the writer changed, a reader
    /// left, the endpoint moved away or lost all its targets) and those served for the first
    /// time in this run (a previous run may have left connections to a former writer).
    /// The rest keep their connections: a target that stays keeps its mark.
    pub fn update(&mut self, endpoints: &[Endpoint]) -> Vec<SocketAddrV4> {
        let mut reset = Vec::new();
        let wanted: HashSet<SocketAddrV4> = endpoints.iter().map(|e| e.address).collect();
        self.endpoints.retain(|address, tags| {
            let keep = wanted.contains(address);
            if !keep && !tags.by_target.is_empty() {
                reset.push(*address);
            }
            keep
        });
        for e in endpoints {
            let seed = self.seed ^ fnv1a(e.address.to_string().as_bytes()) as u8;
            let tags = self.endpoints.entry(e.address).or_insert_with(|| {
                reset.push(e.address);
                Tags {
                    by_target: BTreeMap::new(),
                    last: seed,
                }
            });
            let now: HashSet<SocketAddrV4> = e.targets.iter().map(|t| t.address).collect();
            let before = tags.by_target.len();
            tags.by_target.retain(|t, _| now.contains(t));
            if tags.by_target.len() < before {
                reset.push(e.address);
            }
            for t in &e.targets {
                if tags.by_target.contains_key(&t.address) {
                    continue;
                }
                // At most 256 targets would exhaust the tags; an endpoint has a few.
                let used: HashSet<u8> = tags.by_target.values().copied().collect();
                let mut tag = tags.last.wrapping_add(1);
                while used.contains(&tag) && used.len() < 256 {
                    tag = tag.wrapping_add(1);
                }
                tags.last = tag;
                tags.by_target.insert(t.address, tag);
            }
        }
        reset.sort();
        reset.dedup();
        reset
    }
}

/// A comment for nft: no quotes or backslashes.
fn comment(s: &str) -> String {
    s.chars()
        .map(|c| if c == '"' || c == '\\' { '_' } else { c })
        .collect()
}

fn millis(d: Duration) -> u128 {
    d.as_millis().max(1)
}

/// The script that replaces `table` with the rules for `endpoints`, in one transaction (no
/// moment without rules, nor with two versions). Targets without a mark in `marks` are left
/// out: call [`Marks::update`] first.
pub fn render(table: &str, endpoints: &[Endpoint], marks: &Marks) -> String {
    let mut steer = Vec::new();
    let mut live = Vec::new();
    let mut chains = String::new();
    for e in endpoints {
        let port = e.address.port();
        let rules: Vec<(u32, &Target)> = e
            .targets
            .iter()
            .filter_map(|t| Some((marks.mark(e.address, t.address)?, t)))
            .collect();
        if rules.is_empty() {
            continue;
        }
        let timeout = millis(e.timeout);
        steer.push(format!(
            "{} . {port} timeout {timeout}ms : goto ep_{port}",
            e.address.ip()
        ));
        let target_rule = |mark: u32, t: &Target| {
            format!(
                "meta l4proto tcp ct mark set {mark:#010x} dnat to {} comment \"{} -> {}\"",
                t.address,
                comment(&e.name),
                comment(&t.member)
            )
        };
        let _ = writeln!(chains, "  chain ep_{port} {{");
        if let [(mark, t)] = rules.as_slice() {
            let _ = writeln!(chains, "    {}", target_rule(*mark, t));
            let _ = writeln!(chains, "  }}");
        } else {
            let map: Vec<String> = (0..rules.len())
                .map(|i| format!("{i} : goto ep_{port}_{i}"))
                .collect();
            let _ = writeln!(
                chains,
                "    numgen random mod {} vmap {{ {} }}",
                rules.len(),
                map.join(", ")
            );
            let _ = writeln!(chains, "  }}");
            for (i, (mark, t)) in rules.iter().enumerate() {
                let _ = writeln!(chains, "  chain ep_{port}_{i} {{");
                let _ = writeln!(chains, "    {}", target_rule(*mark, t));
                let _ = writeln!(chains, "  }}");
            }
        }
        for (mark, _) in &rules {
            live.push(format!(
                "{} . {port} . {mark:#010x} timeout {timeout}ms",
                e.address.ip()
            ));
        }
    }
    let elements = |v: &[String]| {
        if v.is_empty() {
            String::new()
        } else {
            format!("\n    elements = {{ {} }}", v.join(", "))
        }
    };
    let fence = format!(
        "meta l4proto tcp ct protocol tcp tcp flags & rst == 0 ct mark & {OWNER_MASK:#010x} == {:#010x} ct original ip daddr . ct original proto-dst . ct mark != @live reject with tcp reset",
        marks.owner()
    );
    format!(
        "table ip {table} {{}}
delete table ip {table}
table ip {table} {{
  map endpoints {{
    type ipv4_addr . inet_service : verdict
    flags timeout{steer}
  }}
  set live {{
    type ipv4_addr . inet_service . mark
    flags timeout{live}
  }}
{chains}  chain steer {{
    type nat hook output priority -100; policy accept;
    ip daddr . tcp dport vmap @endpoints
  }}
  chain fence_out {{
    type filter hook output priority 0; policy accept;
    {fence}
  }}
  chain fence_in {{
    type filter hook input priority 0; policy accept;
    {fence}
  }}
}}
",
        steer = elements(&steer),
        live = elements(&live),
    )
}

/// The script that removes `table`, whether or not it exists.
pub fn render_delete(table: &str) -> String {
    format!("table ip {table} {{}}\ndelete table ip {table}\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::endpoints::{World, leases, resolve, tests as fixtures};
    use hanul_proto::db::ROLE_WRITER;
    use hanul_proto::v1::{DbCluster, DbFailover, DbInstance, FailoverSettings};
    use std::net::Ipv4Addr;

    const BIND: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    /// The endpoints' test cluster, with a lease of `lease` seconds if given.
    fn cluster(writer: &str, epoch: u64, lease: Option<u32>) -> DbCluster {
        let mut c = fixtures::cluster(writer, epoch);
        if let Some(spec) = c.spec.as_mut() {
            spec.failover = lease.map(|s| FailoverSettings {
                automatic: Some(true),
                lease_seconds: Some(s),
            });
        }
        c
    }

    /// The endpoints' test member, at 127.0.0.1 (reachable from a loopback endpoint),
    /// streaming unless it is the writer.
    fn member(role: &str, epoch: u64, port: u32) -> DbInstance {
        let mut m = fixtures::member(role, epoch, port, role != ROLE_WRITER);
        if let Some(s) = m.status.as_mut() {
            s.address = format!("127.0.0.1:{port}");
        }
        m
    }

    fn endpoints_of(c: &DbCluster, members: &[(&str, &DbInstance)]) -> Vec<Endpoint> {
        let world = World {
            clusters: vec![("db", c)],
            members: members.to_vec(),
        };
        endpoints(&resolve(&world, "n1", BIND), &leases(&world))
    }

    fn addr(port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)
    }

    fn targets(e: &[Endpoint], port: u16) -> Vec<u16> {
        e.iter()
            .find(|e| e.address.port() == port)
            .map(|e| e.targets.iter().map(|t| t.address.port()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn the_writer_rule_goes_to_the_writer_of_the_epoch_only() {
        let c = cluster("db-1", 2, None);
        let (m1, m2) = (member(ROLE_WRITER, 2, 30001), member("standby", 2, 30002));
        let e = endpoints_of(&c, &[("db-1", &m1), ("db-2", &m2)]);
        assert_eq!(targets(&e, 6432), [30001]);
        assert_eq!(targets(&e, 6433), [30002]);
        let mut marks = Marks::new("n1", 0);
        marks.update(&e);
        let script = render("hanul_db_n1", &e, &marks);
        let writer_mark = marks.mark(addr(6432), addr(30001)).unwrap();
        assert!(
            script.contains(&format!(
                "ct mark set {writer_mark:#010x} dnat to 127.0.0.1:30001"
            )),
            "{script}"
        );
        assert!(script.contains("127.0.0.1 . 6432 timeout 1500ms : goto ep_6432"));
        assert!(script.contains(&format!(
            "127.0.0.1 . 6432 . {writer_mark:#010x} timeout 1500ms"
        )));
        // The standby is never a writer target: one DNAT to it, from the reader's chain.
        assert_eq!(script.matches("dnat to 127.0.0.1:30002").count(), 1);
        assert_eq!(script.matches("dnat to 127.0.0.1:30001").count(), 1);
        // Not this node's endpoints: nothing.
        let world = World {
            clusters: vec![("db", &c)],
            members: vec![("db-1", &m1)],
        };
        assert!(endpoints(&resolve(&world, "n2", BIND), &HashMap::new()).is_empty());
    }

    #[test]
    fn no_writer_rule_during_a_failover_and_its_old_connections_are_fenced() {
        let mut c = cluster("db-1", 2, None);
        let m1 = member(ROLE_WRITER, 2, 30001);
        let mut marks = Marks::new("n1", 0);
        let before = endpoints_of(&c, &[("db-1", &m1)]);
        marks.update(&before);
        let old = marks.mark(addr(6432), addr(30001)).unwrap();
        c.status.as_mut().unwrap().failover = Some(DbFailover {
            epoch: 3,
            ..Default::default()
        });
        let during = endpoints_of(&c, &[("db-1", &m1)]);
        assert!(targets(&during, 6432).is_empty());
        // The writer endpoint lost its target: its local clients are reset.
        assert!(marks.update(&during).contains(&addr(6432)));
        let script = render("hanul_db_n1", &during, &marks);
        assert!(!script.contains("goto ep_6432"), "{script}");
        assert!(!script.contains(&format!("{old:#010x}")), "{script}");
        // The fence still stands, for this owner's marks.
        assert!(script.contains(&format!(
            "ct mark & 0xffffff00 == {:#010x} ct original ip daddr . ct original proto-dst . ct mark != @live reject with tcp reset",
            marks.owner()
        )));
        assert_eq!(script.matches("reject with tcp reset").count(), 2);
    }

    #[test]
    fn the_reader_spreads_over_its_targets_each_with_its_own_mark() {
        let c = cluster("db-1", 1, None);
        let m1 = member(ROLE_WRITER, 1, 30001);
        let (m2, m3) = (member("standby", 1, 30002), member("standby", 1, 30003));
        let e = endpoints_of(&c, &[("db-1", &m1), ("db-2", &m2), ("db-3", &m3)]);
        assert_eq!(targets(&e, 6433), [30002, 30003]);
        let mut marks = Marks::new("n1", 0);
        marks.update(&e);
        let script = render("hanul_db_n1", &e, &marks);
        assert!(
            script.contains("numgen random mod 2 vmap { 0 : goto ep_6433_0, 1 : goto ep_6433_1 }"),
            "{script}"
        );
        let (a, b) = (
            marks.mark(addr(6433), addr(30002)).unwrap(),
            marks.mark(addr(6433), addr(30003)).unwrap(),
        );
        assert_ne!(a, b);
        assert!(script.contains(&format!("ct mark set {a:#010x} dnat to 127.0.0.1:30002")));
        assert!(script.contains(&format!("ct mark set {b:#010x} dnat to 127.0.0.1:30003")));
        assert_eq!(a & 0xff00_0000, MARK_HANUL);
        assert_eq!(a & OWNER_MASK, marks.owner());
    }

    #[test]
    fn a_mark_changes_when_the_target_changes_and_not_otherwise() {
        let c = cluster("db-1", 1, None);
        let m1 = member(ROLE_WRITER, 1, 30001);
        let (m2, m3) = (member("standby", 1, 30002), member("standby", 1, 30003));
        let mut marks = Marks::new("n1", 7);
        let e = endpoints_of(&c, &[("db-1", &m1), ("db-2", &m2)]);
        // First served in this run: both endpoints' local clients are reset.
        assert_eq!(marks.update(&e), [addr(6432), addr(6433)]);
        let writer = marks.mark(addr(6432), addr(30001)).unwrap();
        let reader = marks.mark(addr(6433), addr(30002)).unwrap();
        // Nothing changed: same marks, nobody reset, same script.
        let script = render("t", &e, &marks);
        assert!(marks.update(&e).is_empty());
        assert_eq!(render("t", &e, &marks), script);
        // A reader joins: the others keep their marks and connections.
        let e = endpoints_of(&c, &[("db-1", &m1), ("db-2", &m2), ("db-3", &m3)]);
        assert!(marks.update(&e).is_empty());
        assert_eq!(marks.mark(addr(6433), addr(30002)), Some(reader));
        assert_eq!(marks.mark(addr(6432), addr(30001)), Some(writer));
        // A reader leaves: the reader endpoint's clients are reset, the writer's are not.
        let e = endpoints_of(&c, &[("db-1", &m1), ("db-3", &m3)]);
        assert_eq!(marks.update(&e), [addr(6433)]);
        assert_eq!(marks.mark(addr(6433), addr(30002)), None);
        // A new writer (here db-3, promoted in epoch 2): a new mark, even if it was a reader.
        let c2 = cluster("db-3", 2, None);
        let w3 = member(ROLE_WRITER, 2, 30003);
        let e = endpoints_of(
            &c2,
            &[("db-1", &member("standby", 2, 30001)), ("db-3", &w3)],
        );
        assert_eq!(targets(&e, 6432), [30003]);
        let reset = marks.update(&e);
        assert!(reset.contains(&addr(6432)), "{reset:?}");
        let new = marks.mark(addr(6432), addr(30003)).unwrap();
        assert_ne!(new, writer);
        // And back to db-1 later: not db-1's old mark either.
        let e = endpoints_of(&c, &[("db-1", &m1)]);
        marks.update(&e);
        let back = marks.mark(addr(6432), addr(30001)).unwrap();
        assert_ne!(back, writer);
        assert_ne!(back, new);
        // The endpoints move to another node: reset, and nothing of them rendered.
        assert_eq!(marks.update(&[]), [addr(6432), addr(6433)]);
        assert!(!render("t", &[], &marks).contains("goto"));
    }

    #[test]
    fn the_owner_comes_from_the_node_name_and_a_run_seeds_the_tags() {
        let a = Marks::new("n1", 0);
        assert_eq!(a.owner(), Marks::new("n1", 99).owner());
        assert_ne!(a.owner(), Marks::new("n2", 0).owner());
        assert_eq!(a.owner() & 0xff, 0);
        assert_eq!(a.owner() & 0xff00_0000, MARK_HANUL);
        let e = vec![Endpoint {
            name: "db/x/writer".into(),
            address: addr(6432),
            targets: vec![Target {
                member: "x-1".into(),
                address: addr(30001),
            }],
            timeout: Duration::from_secs(1),
        }];
        let mut runs = (Marks::new("n1", 1), Marks::new("n1", 2));
        runs.0.update(&e);
        runs.1.update(&e);
        assert_ne!(
            runs.0.mark(addr(6432), addr(30001)),
            runs.1.mark(addr(6432), addr(30001))
        );
    }

    #[test]
    fn table_names_are_nft_identifiers() {
        assert_eq!(table_name("n1-az-a.lab"), "hanul_db_n1-az-a.lab");
        assert_eq!(table_name("a b\"c;{}"), "hanul_db_a_b_c___");
        assert!(table_name(&"x".repeat(300)).len() <= MAX_TABLE_NAME);
        assert_eq!(comment("a\"b\\c"), "a_b_c");
    }

    #[test]
    fn timeouts_are_half_the_lease_within_one_to_five_seconds() {
        assert_eq!(
            timeout_for(Duration::from_secs(3)),
            Duration::from_millis(1500)
        );
        assert_eq!(timeout_for(Duration::from_secs(1)), MIN_TIMEOUT);
        assert_eq!(timeout_for(Duration::from_secs(60)), MAX_TIMEOUT);
        // From the cluster's spec, or the default lease (3 s).
        let m1 = member(ROLE_WRITER, 1, 30001);
        let e = endpoints_of(&cluster("db-1", 1, Some(8)), &[("db-1", &m1)]);
        assert!(e.iter().all(|e| e.timeout == Duration::from_secs(4)));
        let script = {
            let mut marks = Marks::new("n1", 0);
            marks.update(&e);
            render("t", &e, &marks)
        };
        assert!(script.contains("timeout 4000ms : goto ep_6432"), "{script}");
        assert_eq!(
            refresh_interval(&e),
            Some(Duration::from_secs(4) / REFRESHES_PER_TIMEOUT)
        );
        let e = endpoints_of(&cluster("db-1", 1, None), &[("db-1", &m1)]);
        assert_eq!(refresh_interval(&e), Some(Duration::from_millis(500)));
        // Nothing steered: nothing to refresh.
        let e = endpoints_of(&cluster("", 0, None), &[]);
        assert_eq!(e.len(), 2);
        assert_eq!(refresh_interval(&e), None);
    }

    #[test]
    fn endpoints_the_kernel_cannot_serve_are_left_to_the_proxy() {
        let c = cluster("db-1", 1, None);
        let mut m1 = member(ROLE_WRITER, 1, 30001);
        // A remote target behind a loopback endpoint: a packet from 127.0.0.1 cannot leave.
        m1.status.as_mut().unwrap().address = "10.0.0.2:30001".into();
        let e = endpoints_of(&c, &[("db-1", &m1)]);
        assert!(targets(&e, 6432).is_empty());
        // A name, not an address.
        m1.status.as_mut().unwrap().address = "db-host:30001".into();
        assert!(targets(&endpoints_of(&c, &[("db-1", &m1)]), 6432).is_empty());
        // An endpoint bound to a node address reaches remote members.
        m1.status.as_mut().unwrap().address = "10.0.0.2:30001".into();
        let world = World {
            clusters: vec![("db", &c)],
            members: vec![("db-1", &m1)],
        };
        let bind = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        let e = endpoints(&resolve(&world, "n1", bind), &HashMap::new());
        assert_eq!(targets(&e, 6432), [30001]);
        // Unspecified or IPv6: no kernel path at all.
        for bind in [IpAddr::V4(Ipv4Addr::UNSPECIFIED), "::1".parse().unwrap()] {
            assert!(endpoints(&resolve(&world, "n1", bind), &HashMap::new()).is_empty());
        }
    }
}
