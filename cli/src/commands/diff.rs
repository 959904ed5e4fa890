//! `hanul diff -f FILE`: what `apply` would change, as a unified diff of YAML.
//!
//! For each object the server first runs a dry-run apply, which fills in defaults, so that a
//! manifest that leaves a defaulted field out does not show as a change. The compared parts are
//! what apply owns: labels, annotations and spec (for kinds without a spec, everything but
//! metadata). Exit codes follow kubectl: 0 no differences, 1 differences, 2 an error.

use super::emit;
use crate::{error::is_not_found, manifests, output::sort_maps, target::ref_name};
use anyhow::{Result, bail};
use hanul_proto::{manifest::to_value, v1::Object};
use serde_json::{Map, Value};
use std::process::ExitCode;

/// The exit code of a `diff` that failed (1 means "differs").
pub const EXIT_ERROR: u8 = 2;
/// Lines of context around each change.
const CONTEXT: usize = 3;

/// Arguments of `hanul diff`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A manifest file, a directory of them, or - for stdin. Repeatable.
    #[arg(short = 'f', long = "filename", value_name = "FILE", required = true)]
    pub files: Vec<String>,
}

/// Runs `hanul diff`.
pub async fn run(global: &crate::GlobalArgs, args: Args) -> Result<ExitCode> {
    let mut objects = match manifests::load(&args.files) {
        Ok(o) => o,
        Err(errors) => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            bail!("cannot diff: fix the manifests above");
        }
    };
    manifests::apply_order(&mut objects);
    let client = global.connect().await?;
    let mut differs = false;
    for m in &objects {
        let Some(kind) = m.object.kind() else {
            continue;
        };
        let (merged, _) = client.apply(m.object.clone(), true).await?;
        let live = match client.get(kind, m.object.name()).await {
            Ok(o) => Some(o),
            Err(s) => {
                let e = anyhow::Error::from(s);
                if !is_not_found(&e) {
                    return Err(e);
                }
                None
            }
        };
        let name = ref_name(kind, m.object.name());
        let (live, merged) = mask_secrets(live, merged);
        let old = live.as_ref().map(comparable).unwrap_or_default();
        let new = comparable(&merged);
        let from = if live.is_some() {
            format!("live/{name}")
        } else {
            "/dev/null".to_string()
        };
        if let Some(d) = unified(&old, &new, &from, &format!("merged/{name}"), CONTEXT) {
            differs = true;
            emit(&d)?;
        }
    }
    Ok(if differs {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// A Secret's values never print: equal ones show as `***` on both sides, changed ones as
/// `*** (before)` and `*** (after)` (as kubectl does), so that a change still shows.
fn mask_secrets(live: Option<Object>, merged: Object) -> (Option<Object>, Object) {
    use crate::output::REDACTED;
    use hanul_proto::v1::object::Resource;
    let data = |o: &Object| match &o.resource {
        Some(Resource::Secret(s)) => s.spec.as_ref().map(|s| s.data.clone()),
        _ => None,
    };
    let (Some(after), before) = (data(&merged), live.as_ref().and_then(data)) else {
        return (live, merged);
    };
    let before = before.unwrap_or_default();
    let mask = |o: Object,
                mine: &std::collections::HashMap<String, String>,
                other: &std::collections::HashMap<String, String>,
                tag: &str| {
        let mut o = o;
        if let Some(Resource::Secret(s)) = &mut o.resource
            && let Some(spec) = &mut s.spec
        {
            for (k, v) in spec.data.iter_mut() {
                *v = if other.get(k) == mine.get(k) {
                    REDACTED.to_string()
                } else {
                    format!("{REDACTED} ({tag})")
                };
            }
        }
        o
    };
    let masked_live = live.map(|l| mask(l, &before, &after, "before"));
    (masked_live, mask(merged, &after, &before, "after"))
}

/// The YAML of the parts of an object that apply sets: metadata name, labels and annotations,
/// and everything outside metadata except status. Map keys are sorted, so that equal objects
/// print equally.
pub fn comparable(o: &Object) -> String {
    let mut v = to_value(o);
    sort_maps(&mut v);
    let Value::Object(mut top) = v else {
        return String::new();
    };
    top.remove("status");
    if let Some(Value::Object(meta)) = top.remove("metadata") {
        let mut kept = Map::new();
        for key in ["name", "labels", "annotations"] {
            if let Some(val) = meta.get(key) {
                let empty = matches!(val, Value::Object(m) if m.is_empty());
                if !empty {
                    kept.insert(key.to_string(), val.clone());
                }
            }
        }
        // Keep metadata right after apiVersion and kind, where a reader expects it.
        let mut ordered = Map::new();
        for key in ["apiVersion", "kind"] {
            if let Some(v) = top.remove(key) {
                ordered.insert(key.to_string(), v);
            }
        }
        ordered.insert("metadata".into(), Value::Object(kept));
        ordered.extend(top);
        top = ordered;
    }
    serde_saphyr::to_string(&Value::Object(top)).unwrap_or_default()
}

/// One step of a line diff.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Same,
    Removed,
    Added,
}

/// A minimal line diff (longest common subsequence). Objects are small; inputs beyond a few
/// thousand lines fall back to "all removed, all added", which is still a correct diff.
fn line_ops(a: &[&str], b: &[&str]) -> Vec<Op> {
    const MAX_CELLS: usize = 16_000_000;
    let (n, m) = (a.len(), b.len());
    if n.saturating_mul(m) > MAX_CELLS {
        let mut ops = vec![Op::Removed; n];
        ops.extend(vec![Op::Added; m]);
        return ops;
    }
    // lcs[i][j]: the LCS length of a[i..] and b[j..].
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut ops = Vec::with_capacity(n + m);
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            ops.push(Op::Same);
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            // Removals before additions within a change, as `diff -u` prints them.
            ops.push(Op::Removed);
            i += 1;
        } else {
            ops.push(Op::Added);
            j += 1;
        }
    }
    ops
}

/// A unified diff of two texts with `context` lines around changes, or `None` when they are
/// equal.
pub fn unified(old: &str, new: &str, from: &str, to: &str, context: usize) -> Option<String> {
    if old == new {
        return None;
    }
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let ops = line_ops(&a, &b);
    // Each op with the old and new line index it starts at.
    let mut pos = Vec::with_capacity(ops.len());
    let (mut i, mut j) = (0, 0);
    for op in &ops {
        pos.push((i, j));
        match op {
            Op::Same => {
                i += 1;
                j += 1;
            }
            Op::Removed => i += 1,
            Op::Added => j += 1,
        }
    }
    let changes: Vec<usize> = (0..ops.len()).filter(|&k| ops[k] != Op::Same).collect();
    if changes.is_empty() {
        return None;
    }
    // Group changes whose context would touch into hunks of op ranges.
    let mut hunks: Vec<(usize, usize)> = Vec::new();
    for &c in &changes {
        let start = c.saturating_sub(context);
        let end = (c + context + 1).min(ops.len());
        match hunks.last_mut() {
            Some((_, e)) if start <= *e => *e = end,
            _ => hunks.push((start, end)),
        }
    }
    let mut out = format!("--- {from}\n+++ {to}\n");
    for (start, end) in hunks {
        let (oi, nj) = pos[start];
        let old_len = ops[start..end].iter().filter(|o| **o != Op::Added).count();
        let new_len = ops[start..end]
            .iter()
            .filter(|o| **o != Op::Removed)
            .count();
        let at = |p: usize, len: usize| if len == 0 { p } else { p + 1 };
        out.push_str(&format!(
            "@@ -{},{old_len} +{},{new_len} @@\n",
            at(oi, old_len),
            at(nj, new_len)
        ));
        for k in start..end {
            let (i, j) = pos[k];
            match ops[k] {
                Op::Same => out.push_str(&format!(" {}\n", a[i])),
                Op::Removed => out.push_str(&format!("-{}\n", a[i])),
                Op::Added => out.push_str(&format!("+{}\n", b[j])),
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hanul_proto::v1::{Instance, InstanceSpec, InstanceStatus, ObjectMeta};

    #[test]
    fn equal_texts_have_no_diff() {
        assert_eq!(unified("a\nb\n", "a\nb\n", "x", "y", 3), None);
    }

    #[test]
    fn a_changed_line_shows_with_context_and_a_correct_header() {
        let old = "a\nb\nc\nd\ne\nf\ng\nh\n";
        let new = "a\nb\nc\nd\nE\nf\ng\nh\n";
        let d = unified(old, new, "live/x", "merged/x", 3).unwrap();
        assert_eq!(
            d,
            "--- live/x\n+++ merged/x\n@@ -2,7 +2,7 @@\n b\n c\n d\n-e\n+E\n f\n g\n h\n"
        );
    }

    #[test]
    fn distant_changes_make_separate_hunks_and_a_create_is_all_additions() {
        let old: String = (1..=20).map(|i| format!("{i}\n")).collect();
        let new: String = (1..=20)
            .map(|i| match i {
                2 => "two\n".to_string(),
                19 => "nineteen\n".to_string(),
                i => format!("{i}\n"),
            })
            .collect();
        let d = unified(&old, &new, "a", "b", 1).unwrap();
        assert_eq!(d.matches("@@ -").count(), 2, "{d}");
        assert!(
            d.contains("-2\n+two\n") && d.contains("-19\n+nineteen\n"),
            "{d}"
        );
        let created = unified("", "x\ny\n", "/dev/null", "merged/i", 3).unwrap();
        assert!(created.contains("@@ -0,0 +1,2 @@\n+x\n+y\n"), "{created}");
    }

    #[test]
    fn comparison_ignores_status_and_server_owned_metadata() {
        let mk = |rv: u64, state: &str, image: &str| -> Object {
            Instance {
                metadata: Some(ObjectMeta {
                    name: "web-1".into(),
                    resource_version: rv,
                    uid: format!("uid-{rv}"),
                    labels: [("b".to_string(), "2".to_string()), ("a".into(), "1".into())]
                        .into_iter()
                        .collect(),
                    ..Default::default()
                }),
                spec: Some(InstanceSpec {
                    image: image.into(),
                    ..Default::default()
                }),
                status: Some(InstanceStatus {
                    state: state.into(),
                    ..Default::default()
                }),
            }
            .into()
        };
        let a = comparable(&mk(1, "running", "web-v1"));
        assert_eq!(a, comparable(&mk(7, "stopped", "web-v1")));
        assert!(
            a.starts_with("apiVersion: hanul/v1\nkind: Instance\nmetadata:\n"),
            "{a}"
        );
        assert!(!a.contains("uid") && !a.contains("status"), "{a}");
        let b = comparable(&mk(1, "running", "web-v2"));
        let d = unified(&a, &b, "live", "merged", 3).unwrap();
        assert!(d.contains("-  image: web-v1\n+  image: web-v2\n"), "{d}");
    }
}
