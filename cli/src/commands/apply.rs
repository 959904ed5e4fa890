//! `hanul apply -f FILE|DIR|- [--dry-run] [--prune -l SELECTOR]`.
//!
//! All or nothing, as far as a client can make it so: every file is read and every document
//! parsed, then the server checks every object with a dry-run apply (its admission: defaults and
//! validation), and only when all pass is anything written. Objects are applied in an order where
//! what is referred to comes first ([`crate::manifests::apply_order`]).

use super::{check_selector, emit};
use crate::{error::render_status, manifests, output::kind_word, target::ref_name};
use anyhow::{Result, bail};
use hanul_proto::{
    Client, Kind, Selector,
    manifest::ManifestObject,
    v1::{ApplyResult, Object},
};
use std::{
    collections::{BTreeMap, BTreeSet},
    process::ExitCode,
};
use tonic::{Code, Status};

/// Arguments of `hanul apply`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A manifest file, a directory of them (*.yaml, *.yml, *.json), or - for stdin. Repeatable.
    #[arg(short = 'f', long = "filename", value_name = "FILE", required = true)]
    pub files: Vec<String>,
    /// Check everything with the server and print what would happen, writing nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Afterwards, delete objects of the applied kinds that match -l but are not in the
    /// manifests.
    #[arg(long, requires = "selector")]
    pub prune: bool,
    /// Only apply manifest objects whose labels match; with --prune, the objects to prune.
    #[arg(short = 'l', long = "selector", value_name = "SELECTOR")]
    pub selector: Option<String>,
}

/// What apply printed for one object.
pub fn result_word(r: ApplyResult) -> &'static str {
    match r {
        ApplyResult::Created => "created",
        ApplyResult::Configured => "configured",
        ApplyResult::Unchanged => "unchanged",
        ApplyResult::Unspecified => "applied",
    }
}

/// Statuses that say nothing about one object but about the connection or the credentials:
/// no point checking the other objects.
fn is_fatal(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable
            | Code::Unauthenticated
            | Code::PermissionDenied
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Unimplemented
    )
}

/// Runs `hanul apply`.
pub async fn run(global: &crate::GlobalArgs, args: Args) -> Result<ExitCode> {
    let selector_text = check_selector(args.selector.as_deref())?;
    let mut objects = match manifests::load(&args.files) {
        Ok(o) => o,
        Err(errors) => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            bail!("nothing was applied: fix the manifests above");
        }
    };
    if !selector_text.is_empty() {
        let sel = Selector::parse(&selector_text).map_err(anyhow::Error::msg)?;
        objects.retain(|m| {
            m.object
                .metadata()
                .is_some_and(|meta| sel.matches(&meta.labels))
        });
        if objects.is_empty() && !args.prune {
            eprintln!("No objects in the manifests match {selector_text:?}.");
            return Ok(ExitCode::SUCCESS);
        }
    }
    manifests::apply_order(&mut objects);
    let client = global.connect().await?;

    // 1. The server checks every object; nothing is written unless all pass.
    let mut checked = Vec::with_capacity(objects.len());
    let mut refused = 0;
    // Instances may use an instance type defined in the same manifests.
    let types: Vec<String> = objects
        .iter()
        .filter(|m| m.object.kind() == Some(Kind::InstanceType))
        .map(|m| m.object.name().to_string())
        .collect();
    for m in &objects {
        match client
            .apply_with(m.object.clone(), true, types.clone())
            .await
        {
            Ok((_, result)) => checked.push(result),
            Err(status) if is_fatal(&status) => return Err(status.into()),
            Err(status) => {
                refused += 1;
                eprintln!("{}", refusal(m, &status));
            }
        }
    }
    if refused > 0 {
        bail!(
            "{refused} of {} objects refused; nothing was applied",
            objects.len()
        );
    }

    // 2. Apply for real (or report what the dry run said).
    let mut failed = false;
    if args.dry_run {
        for (m, result) in objects.iter().zip(&checked) {
            emit(&format!(
                "{} {} (dry run)\n",
                object_ref(&m.object),
                result_word(*result)
            ))?;
        }
    } else {
        for m in &objects {
            match client.apply(m.object.clone(), false).await {
                Ok((_, result)) => emit(&format!(
                    "{} {}\n",
                    object_ref(&m.object),
                    result_word(result)
                ))?,
                Err(status) if is_fatal(&status) => return Err(status.into()),
                Err(status) => {
                    // Checked a moment ago; something changed meanwhile. Go on with the rest.
                    failed = true;
                    eprintln!("{}", refusal(m, &status));
                }
            }
        }
    }

    // 3. Prune what the manifests no longer name.
    if args.prune {
        if failed {
            eprintln!("warning: not pruning, because some objects failed to apply");
        } else {
            failed |= prune(&client, &objects, &selector_text, args.dry_run).await?;
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `instance/web-1`.
fn object_ref(o: &Object) -> String {
    match o.kind() {
        Some(k) => ref_name(k, o.name()),
        None => format!("{}/{}", kind_word(o), o.name()),
    }
}

/// `Instance/web-1: spec.vcpu: must be > 0 (web.yaml document 2; InvalidArgument)`.
pub fn refusal(m: &ManifestObject, status: &Status) -> String {
    let message = if status.message().is_empty() {
        render_status(status)
    } else {
        status.message().to_string()
    };
    format!(
        "{}: {message} ({} document {}; {:?})",
        m.object.key(),
        m.source_name,
        m.index,
        status.code()
    )
}

/// The names the manifests give, per kind: what pruning keeps.
pub fn kept_names(objects: &[ManifestObject]) -> BTreeMap<Kind, BTreeSet<String>> {
    let mut kept: BTreeMap<Kind, BTreeSet<String>> = BTreeMap::new();
    for m in objects {
        if let Some(k) = m.object.kind() {
            kept.entry(k)
                .or_default()
                .insert(m.object.name().to_string());
        }
    }
    kept
}

/// Whether a live object is pruned: not named by the manifests, not already being deleted,
/// and not managed by an owner (an owner's controller creates and removes those).
pub fn should_prune(live: &Object, kept: &BTreeSet<String>) -> bool {
    let Some(meta) = live.metadata() else {
        return false;
    };
    !kept.contains(&meta.name)
        && meta.deleted_at.is_none()
        && !meta.owner_references.iter().any(|r| r.controller)
}

/// Deletes live objects of the manifests' kinds that match the selector and are not in the
/// manifests; returns whether any deletion failed.
async fn prune(
    client: &Client,
    objects: &[ManifestObject],
    selector: &str,
    dry_run: bool,
) -> Result<bool> {
    let mut failed = false;
    for (kind, kept) in kept_names(objects) {
        let (live, _) = client.list(Some(kind), selector).await?;
        for o in live.iter().filter(|o| should_prune(o, &kept)) {
            match client.delete_at(kind, o.name(), 0, dry_run).await {
                Ok(_) => emit(&format!(
                    "{} pruned{}\n",
                    ref_name(kind, o.name()),
                    if dry_run { " (dry run)" } else { "" }
                ))?,
                Err(status) if status.code() == Code::NotFound => {}
                Err(status) => {
                    failed = true;
                    eprintln!("{}: {}", o.key(), render_status(&status));
                }
            }
        }
    }
    Ok(failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hanul_proto::v1::{Instance, ObjectMeta, OwnerReference};

    fn inst(name: &str, owned: bool, deleting: bool) -> Object {
        Instance {
            metadata: Some(ObjectMeta {
                name: name.into(),
                owner_references: if owned {
                    vec![OwnerReference {
                        kind: "AutoScalingGroup".into(),
                        name: "web".into(),
                        uid: "u".into(),
                        controller: true,
                    }]
                } else {
                    vec![]
                },
                deleted_at: deleting.then(Default::default),
                ..Default::default()
            }),
            spec: None,
            status: None,
        }
        .into()
    }

    #[test]
    fn prune_removes_only_unnamed_unowned_live_objects() {
        let kept: BTreeSet<String> = ["web-1".to_string()].into();
        assert!(!should_prune(&inst("web-1", false, false), &kept));
        assert!(should_prune(&inst("web-2", false, false), &kept));
        assert!(!should_prune(&inst("web-3", true, false), &kept));
        assert!(!should_prune(&inst("web-4", false, true), &kept));
    }

    #[test]
    fn kept_names_are_grouped_by_kind() {
        let objs = hanul_proto::manifest::parse(
            "m",
            "apiVersion: hanul/v1\nkind: Instance\nmetadata: {name: a}\n---\n\
             apiVersion: hanul/v1\nkind: Volume\nmetadata: {name: a}\n---\n\
             apiVersion: hanul/v1\nkind: Instance\nmetadata: {name: b}\n",
        )
        .unwrap();
        let kept = kept_names(&objs);
        assert_eq!(kept[&Kind::Instance].len(), 2);
        assert_eq!(kept[&Kind::Volume].len(), 1);
    }

    #[test]
    fn refusals_name_the_object_its_document_and_the_servers_reason() {
        let objs = hanul_proto::manifest::parse(
            "web.yaml",
            "apiVersion: hanul/v1\nkind: InstanceType\nmetadata: {name: big}\n",
        )
        .unwrap();
        let line = refusal(
            &objs[0],
            &Status::invalid_argument("spec.vcpu: must be > 0"),
        );
        assert_eq!(
            line,
            "InstanceType/big: spec.vcpu: must be > 0 (web.yaml document 1; InvalidArgument)"
        );
    }

    #[test]
    fn apply_results_print_as_kubectl_words() {
        assert_eq!(result_word(ApplyResult::Created), "created");
        assert_eq!(result_word(ApplyResult::Configured), "configured");
        assert_eq!(result_word(ApplyResult::Unchanged), "unchanged");
    }
}
