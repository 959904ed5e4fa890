//! `hanul delete KIND NAME... | KIND/NAME... | KIND -l SELECTOR | KIND --all | -f FILE
//! [--wait] [--timeout 60s] [--ignore-not-found] [--dry-run]`.

use super::wait::{WaitFor, wait_for};
use super::{check_selector, emit, parse_duration};
use crate::{
    error::{render_status, report},
    manifests,
    target::{Targets, lower, parse_targets},
};
use anyhow::{Result, bail};
use hanul_proto::{Kind, v1::DeleteResponse};
use std::{process::ExitCode, time::Duration};
use tokio::time::Instant;
use tonic::Code;

/// Arguments of `hanul delete`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// KIND NAME..., KIND/NAME..., or KIND with -l or --all.
    #[arg(value_name = "KIND [NAME...]")]
    pub targets: Vec<String>,
    /// Delete the objects a manifest file, directory or stdin (-) names.
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "FILE",
        conflicts_with = "targets"
    )]
    pub files: Vec<String>,
    /// Delete the objects of KIND whose labels match.
    #[arg(short = 'l', long = "selector", value_name = "SELECTOR")]
    pub selector: Option<String>,
    /// Delete every object of KIND.
    #[arg(long, conflicts_with = "selector")]
    pub all: bool,
    /// Wait until the objects are gone (their finalizers done).
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Treat objects that do not exist as deleted.
    #[arg(long)]
    pub ignore_not_found: bool,
    /// Ask the server whether the deletes would succeed, without deleting.
    #[arg(long)]
    pub dry_run: bool,
}

/// What delete prints for one object: `instance "web-1" deleted`, or
/// `instance "web-1" marked for deletion (finalizers: a, b)` while finalizers hold it.
pub fn deleted_line(kind: Kind, name: &str, resp: &DeleteResponse, dry_run: bool) -> String {
    let suffix = if dry_run { " (dry run)" } else { "" };
    let finalizers = resp
        .object
        .as_ref()
        .and_then(|o| o.metadata())
        .map(|m| m.finalizers.clone())
        .unwrap_or_default();
    if resp.removed || finalizers.is_empty() {
        format!("{} {name:?} deleted{suffix}", lower(kind))
    } else {
        format!(
            "{} {name:?} marked for deletion (finalizers: {}){suffix}",
            lower(kind),
            finalizers.join(", ")
        )
    }
}

/// Runs `hanul delete`.
pub async fn run(global: &crate::GlobalArgs, args: Args) -> Result<ExitCode> {
    let selector = check_selector(args.selector.as_deref())?;
    // Resolve what to delete before connecting, so that usage errors need no server.
    enum Plan {
        Named(Vec<(Kind, String)>),
        Select(Kind),
    }
    let plan = if !args.files.is_empty() {
        let mut objects = match manifests::load(&args.files) {
            Ok(o) => o,
            Err(errors) => {
                for e in &errors {
                    eprintln!("error: {e}");
                }
                bail!("nothing was deleted: fix the manifests above");
            }
        };
        manifests::delete_order(&mut objects);
        Plan::Named(
            objects
                .iter()
                .filter_map(|m| Some((m.object.kind()?, m.object.name().to_string())))
                .collect(),
        )
    } else {
        match parse_targets(&args.targets)? {
            Targets::Named(_) if !selector.is_empty() || args.all => {
                bail!("name objects, or select them with -l or --all, not both")
            }
            Targets::Named(n) => Plan::Named(n),
            Targets::All(kind) if selector.is_empty() && !args.all => bail!(
                "name the {} to delete, or select them with -l SELECTOR or --all",
                kind.plural()
            ),
            Targets::All(kind) => Plan::Select(kind),
        }
    };

    let client = global.connect().await?;
    let targets = match plan {
        Plan::Named(n) => n,
        Plan::Select(kind) => {
            let (items, _) = client.list(Some(kind), &selector).await?;
            if items.is_empty() {
                eprintln!("No resources found.");
                return Ok(ExitCode::SUCCESS);
            }
            items.iter().map(|o| (kind, o.name().to_string())).collect()
        }
    };

    let mut failed = false;
    let mut pending = Vec::new();
    for (kind, name) in &targets {
        match client.delete_at(*kind, name, 0, args.dry_run).await {
            Ok(resp) => {
                emit(&format!(
                    "{}\n",
                    deleted_line(*kind, name, &resp, args.dry_run)
                ))?;
                if !resp.removed && !args.dry_run {
                    pending.push((*kind, name.clone()));
                }
            }
            Err(s) if s.code() == Code::NotFound && args.ignore_not_found => {}
            Err(s) if s.code() == Code::NotFound => {
                failed = true;
                eprintln!("{}", render_status(&s));
            }
            Err(s) => return Err(s.into()),
        }
    }

    if args.wait {
        let deadline = Instant::now() + args.timeout;
        for (kind, name) in &pending {
            if let Err(e) = wait_for(&client, *kind, name, &WaitFor::Delete, deadline).await {
                failed = true;
                report(&e);
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hanul_proto::v1::{Instance, ObjectMeta};

    fn resp(removed: bool, finalizers: &[&str]) -> DeleteResponse {
        DeleteResponse {
            object: Some(
                Instance {
                    metadata: Some(ObjectMeta {
                        name: "web-1".into(),
                        finalizers: finalizers.iter().map(|f| f.to_string()).collect(),
                        ..Default::default()
                    }),
                    spec: None,
                    status: None,
                }
                .into(),
            ),
            removed,
        }
    }

    #[test]
    fn deletes_print_like_kubectl_and_name_the_finalizers_that_hold_an_object() {
        assert_eq!(
            deleted_line(Kind::Instance, "web-1", &resp(true, &[]), false),
            "instance \"web-1\" deleted"
        );
        assert_eq!(
            deleted_line(Kind::Instance, "web-1", &resp(false, &["a", "b"]), false),
            "instance \"web-1\" marked for deletion (finalizers: a, b)"
        );
        assert_eq!(
            deleted_line(Kind::Instance, "web-1", &resp(true, &[]), true),
            "instance \"web-1\" deleted (dry run)"
        );
    }
}
