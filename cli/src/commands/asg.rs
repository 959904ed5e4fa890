//! `hanul asg ...`: the EC2 Auto Scaling calls that are not edits of a group's manifest —
//! `activities` (DescribeScalingActivities), `complete-lifecycle-action`, `record-heartbeat`
//! (CompleteLifecycleAction, RecordLifecycleActionHeartbeat), `start-instance-refresh` and
//! `cancel-instance-refresh`.
//!
//! The group controller owns every decision; these verbs only ask, through annotations it reads
//! (`hanul_proto::autoscaling`): a lifecycle action's result or heartbeat goes on the waiting
//! Instance, an instance refresh request or cancellation on the group, each a read-modify-write
//! with the resourceVersion read ([`super::update_retrying`]). The checks made here (is there
//! such a lifecycle action, is a refresh in progress) read the group's status, so that a
//! mistyped hook or instance is an error rather than an annotation nobody reads.

use super::{annotate, emit, name_of_kind, request_stamp, update_retrying};
use crate::{
    output::{NONE, Table, age, or_none},
    target::ref_name,
};
use anyhow::{Result, anyhow, bail};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use hanul_proto::{
    Client, Kind,
    autoscaling::{
        CANCEL_REFRESH_ANNOTATION, LifecycleResult, LifecycleState, REFRESH_ANNOTATION,
        action_annotation, heartbeat_annotation,
    },
    v1::{
        AutoScalingGroup, InstanceRefresh, LifecycleWait, Object, ScalingActivity, object::Resource,
    },
};
use pbjson_types::Timestamp;
use std::process::ExitCode;

/// `status.instanceRefresh.status` values of a refresh that is still going: the ones a
/// cancellation applies to and a new start is refused for (AWS's InstanceRefreshInProgress).
/// The proto crate has no enum for these words; they are the proto's documented values.
pub const REFRESH_ACTIVE: &[&str] = &["Pending", "InProgress"];

/// Arguments of `hanul asg`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

/// The `hanul asg` verbs.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List a group's scaling activities, newest first.
    Activities(ActivitiesArgs),
    /// Let an instance waiting at a lifecycle hook go on (CONTINUE) or give it up (ABANDON).
    CompleteLifecycleAction(CompleteArgs),
    /// Extend an instance's wait at a lifecycle hook by another heartbeat timeout.
    RecordHeartbeat(LifecycleActionArgs),
    /// Replace the group's instances that run an older launch template version, in batches.
    StartInstanceRefresh(GroupArgs),
    /// Stop the instance refresh in progress (instances already replaced stay).
    CancelInstanceRefresh(GroupArgs),
}

/// How `hanul asg activities` prints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ActivitiesFormat {
    /// Aligned columns (the default).
    #[default]
    Table,
    /// `{"activities": [...]}`, every field.
    Json,
}

/// Arguments of `hanul asg activities`.
#[derive(Debug, clap::Args)]
pub struct ActivitiesArgs {
    /// The group (`web` or `asg/web`).
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: ActivitiesFormat,
}

/// Which lifecycle action: a group's hook and one of its instances.
#[derive(Debug, clap::Args)]
pub struct LifecycleActionArgs {
    /// The group (`web` or `asg/web`).
    #[arg(value_name = "GROUP")]
    pub group: String,
    /// The lifecycle hook's name.
    #[arg(long, value_name = "NAME")]
    pub hook: String,
    /// The waiting instance's name.
    #[arg(long, value_name = "ID")]
    pub instance: String,
}

/// Arguments of `hanul asg complete-lifecycle-action`.
#[derive(Debug, clap::Args)]
pub struct CompleteArgs {
    #[command(flatten)]
    pub action: LifecycleActionArgs,
    /// CONTINUE or ABANDON (an abandoned launch is terminated, an abandoned termination goes on).
    #[arg(long, value_name = "RESULT", value_parser = lifecycle_result())]
    pub result: LifecycleResult,
}

/// Arguments of the instance refresh verbs.
#[derive(Debug, clap::Args)]
pub struct GroupArgs {
    /// The group (`web` or `asg/web`).
    #[arg(value_name = "NAME")]
    pub name: String,
}

/// `--result`: exactly AWS's words, listed in `--help` and in the parser's refusal.
fn lifecycle_result() -> impl TypedValueParser<Value = LifecycleResult> {
    PossibleValuesParser::new(LifecycleResult::ALL.iter().copied()).try_map(|s| {
        LifecycleResult::parse(&s)
            .ok_or_else(|| format!("{s:?}: expected {}", LifecycleResult::ALL.join(" or ")))
    })
}

/// Runs `hanul asg`.
pub async fn run(global: &crate::GlobalArgs, args: Args) -> Result<ExitCode> {
    match args.command {
        Command::Activities(a) => activities(global, a).await,
        Command::CompleteLifecycleAction(a) => {
            let result = a.result;
            lifecycle_action(global, a.action, Some(result)).await
        }
        Command::RecordHeartbeat(a) => lifecycle_action(global, a, None).await,
        Command::StartInstanceRefresh(a) => refresh(global, a, false).await,
        Command::CancelInstanceRefresh(a) => refresh(global, a, true).await,
    }
}

/// The group inside `o`.
pub fn group_of(o: &Object) -> Result<&AutoScalingGroup> {
    match &o.resource {
        Some(Resource::AutoScalingGroup(g)) => Ok(g),
        _ => Err(anyhow!("{} is not an auto scaling group", o.key())),
    }
}

fn group_key(g: &AutoScalingGroup) -> String {
    let name = g.metadata.as_ref().map(|m| m.name.as_str()).unwrap_or("");
    ref_name(Kind::AutoScalingGroup, name)
}

async fn get_group(client: &Client, arg: &str) -> Result<Object> {
    let name = name_of_kind(arg, Kind::AutoScalingGroup)?;
    Ok(client.get(Kind::AutoScalingGroup, name).await?)
}

/// A group's activities, newest first (the status keeps them oldest first).
pub fn newest_first(g: &AutoScalingGroup) -> impl Iterator<Item = &ScalingActivity> {
    g.status.iter().flat_map(|s| s.activities.iter().rev())
}

/// `5m ago`, or `<none>` for a time not yet reached (an activity still in progress).
fn ago(t: Option<&Timestamp>, now: i64) -> String {
    match t {
        Some(t) if t.seconds > 0 => format!("{} ago", age(Some(t), now)),
        _ => NONE.into(),
    }
}

/// The activities table, in the order given: ID, STATUS (with its message), START and END as
/// ages, DESCRIPTION, CAUSE — the columns of `aws autoscaling describe-scaling-activities`.
pub fn activities_table<'a>(
    activities: impl IntoIterator<Item = &'a ScalingActivity>,
    now: i64,
) -> Table {
    let mut t = Table::new(&["ID", "STATUS", "START", "END", "DESCRIPTION", "CAUSE"]);
    for a in activities {
        let mut status = or_none(&a.status_code);
        if !a.status_message.is_empty() {
            status = format!("{status}: {}", a.status_message);
        }
        t.push(vec![
            a.id.to_string(),
            status,
            ago(a.start_time.as_ref(), now),
            ago(a.end_time.as_ref(), now),
            or_none(&a.description),
            or_none(&a.cause),
        ]);
    }
    t
}

/// `hanul asg activities -o json`: every field, newest first, in the proto3 JSON mapping.
pub fn activities_json(g: &AutoScalingGroup) -> Result<String> {
    let items: Vec<&ScalingActivity> = newest_first(g).collect();
    let mut s = serde_json::to_string_pretty(&serde_json::json!({ "activities": items }))?;
    s.push('\n');
    Ok(s)
}

async fn activities(global: &crate::GlobalArgs, args: ActivitiesArgs) -> Result<ExitCode> {
    let client = global.connect().await?;
    let o = get_group(&client, &args.name).await?;
    let g = group_of(&o)?;
    match args.output {
        ActivitiesFormat::Json => emit(&activities_json(g)?)?,
        ActivitiesFormat::Table => {
            let t = activities_table(newest_first(g), crate::output::now_secs());
            if t.is_empty() {
                eprintln!("No scaling activities found for {}.", group_key(g));
            } else {
                emit(&t.render())?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The lifecycle action `hook` holds `instance` in: its wait entry. Refuses, in AWS's words,
/// when the group has no such hook or the instance is not waiting for it (not in the group, not
/// in `Pending:Wait`/`Terminating:Wait`, waiting for other hooks, or already decided).
pub fn active_lifecycle_action<'a>(
    g: &'a AutoScalingGroup,
    hook: &str,
    instance: &str,
) -> Result<&'a LifecycleWait> {
    let hooks: Vec<&str> = g
        .spec
        .iter()
        .flat_map(|s| &s.lifecycle_hooks)
        .map(|h| h.name.as_str())
        .collect();
    if !hooks.contains(&hook) {
        let have = if hooks.is_empty() {
            "it has none".to_string()
        } else {
            format!("its hooks: {}", hooks.join(", "))
        };
        bail!("{} has no lifecycle hook {hook:?} ({have})", group_key(g));
    }
    let none = format!("No active Lifecycle Action found with instance ID {instance}");
    let Some(i) = g
        .status
        .iter()
        .flat_map(|s| &s.instances)
        .find(|i| i.instance == instance)
    else {
        bail!("{none}: it is not an instance of {}", group_key(g));
    };
    let waiting = [LifecycleState::PendingWait, LifecycleState::TerminatingWait];
    if !LifecycleState::parse(&i.lifecycle_state).is_some_and(|s| waiting.contains(&s)) {
        bail!(
            "{none}: it is {}, not waiting at a lifecycle hook ({} or {})",
            or_none(&i.lifecycle_state),
            LifecycleState::PendingWait,
            LifecycleState::TerminatingWait
        );
    }
    let Some(wait) = i.waits.iter().find(|w| w.hook == hook) else {
        let others: Vec<&str> = i.waits.iter().map(|w| w.hook.as_str()).collect();
        bail!(
            "{none}: it is {} waiting for {}, not for hook {hook:?}",
            i.lifecycle_state,
            if others.is_empty() {
                NONE.to_string()
            } else {
                others.join(", ")
            }
        );
    };
    if !wait.result.is_empty() {
        bail!(
            "{none}: its action for hook {hook:?} is already complete ({})",
            wait.result
        );
    }
    Ok(wait)
}

/// `complete-lifecycle-action` with `Some(result)`, `record-heartbeat` with `None`.
async fn lifecycle_action(
    global: &crate::GlobalArgs,
    args: LifecycleActionArgs,
    result: Option<LifecycleResult>,
) -> Result<ExitCode> {
    let instance = name_of_kind(&args.instance, Kind::Instance)?;
    let client = global.connect().await?;
    let o = get_group(&client, &args.group).await?;
    active_lifecycle_action(group_of(&o)?, &args.hook, instance)?;
    let hook = &args.hook;
    let line = match result {
        Some(result) => {
            let key = action_annotation(hook);
            annotate(&client, Kind::Instance, instance, &key, result.as_str()).await?;
            format!("lifecycle action completed: instance {instance} hook {hook} result {result}\n")
        }
        None => {
            let key = heartbeat_annotation(hook);
            annotate(&client, Kind::Instance, instance, &key, &request_stamp()).await?;
            format!("lifecycle action heartbeat recorded: instance {instance} hook {hook}\n")
        }
    };
    emit(&line)?;
    Ok(ExitCode::SUCCESS)
}

/// The group's instance refresh if one is pending or in progress.
pub fn active_refresh(g: &AutoScalingGroup) -> Option<&InstanceRefresh> {
    g.status
        .as_ref()
        .and_then(|s| s.instance_refresh.as_ref())
        .filter(|r| REFRESH_ACTIVE.contains(&r.status.as_str()))
}

/// Whether a refresh may be started (`cancel` false) or cancelled (`cancel` true) now.
pub fn check_refresh(g: &AutoScalingGroup, cancel: bool) -> Result<()> {
    let key = group_key(g);
    match (active_refresh(g), cancel) {
        (Some(r), false) => bail!(
            "{key}: an instance refresh is already {} ({}% complete); cancel it first with \
             `hanul asg cancel-instance-refresh {}`",
            r.status,
            r.percentage_complete,
            g.metadata.as_ref().map(|m| m.name.as_str()).unwrap_or("")
        ),
        (None, true) => {
            let last = g
                .status
                .as_ref()
                .and_then(|s| s.instance_refresh.as_ref())
                .map(|r| format!(" (the last one is {})", or_none(&r.status)))
                .unwrap_or_default();
            bail!("{key}: no instance refresh in progress{last}")
        }
        _ => Ok(()),
    }
}

/// `start-instance-refresh` (`cancel` false) and `cancel-instance-refresh`.
async fn refresh(global: &crate::GlobalArgs, args: GroupArgs, cancel: bool) -> Result<ExitCode> {
    let name = name_of_kind(&args.name, Kind::AutoScalingGroup)?;
    let client = global.connect().await?;
    let key = if cancel {
        CANCEL_REFRESH_ANNOTATION
    } else {
        REFRESH_ANNOTATION
    };
    let stamp = request_stamp();
    update_retrying(&client, Kind::AutoScalingGroup, name, |o| {
        // Checked on each fresh read, so the request matches what the group is doing.
        check_refresh(group_of(o)?, cancel)?;
        o.metadata_mut()
            .annotations
            .insert(key.to_string(), stamp.clone());
        Ok(())
    })
    .await?;
    let what = if cancel {
        "cancellation requested"
    } else {
        "requested"
    };
    emit(&format!(
        "{} instance refresh {what}\n",
        ref_name(Kind::AutoScalingGroup, name)
    ))?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{Cli, UserCommand};
    use clap::Parser;
    use hanul_proto::v1::{
        AutoScalingGroupSpec, AutoScalingGroupStatus, AutoScalingInstance, LaunchTemplateData,
        LifecycleHook, ObjectMeta,
    };

    pub const NOW: i64 = 1_700_000_000;

    pub fn ts(ago: i64) -> Option<Timestamp> {
        Some(Timestamp {
            seconds: NOW - ago,
            nanos: 0,
        })
    }

    fn activity(id: u64, status: &str, started: i64, ended: Option<i64>) -> ScalingActivity {
        ScalingActivity {
            id,
            description: format!("Launching a new EC2 instance: web-{id}"),
            cause: format!(
                "At {id} an instance was started in response to a difference \
                            between desired and actual capacity."
            ),
            start_time: ts(started),
            end_time: ended.and_then(ts),
            status_code: status.into(),
            instance: format!("web-{id}"),
            ..Default::default()
        }
    }

    fn instance(name: &str, state: &str, waits: &[(&str, &str)]) -> AutoScalingInstance {
        AutoScalingInstance {
            instance: name.into(),
            zone: "az-a".into(),
            lifecycle_state: state.into(),
            health_status: "Healthy".into(),
            launch_template_version: 2,
            launched_at: ts(600),
            waits: waits
                .iter()
                .map(|(hook, result)| LifecycleWait {
                    hook: hook.to_string(),
                    deadline: ts(-3000),
                    heartbeat: String::new(),
                    result: result.to_string(),
                })
                .collect(),
            ..Default::default()
        }
    }

    /// A group with a launch hook, instances in several states and three activities.
    pub fn web() -> AutoScalingGroup {
        AutoScalingGroup {
            metadata: Some(ObjectMeta {
                name: "web".into(),
                created_at: ts(3600),
                ..Default::default()
            }),
            spec: Some(AutoScalingGroupSpec {
                launch_template: Some(LaunchTemplateData {
                    image: "web-v2".into(),
                    instance_type: "t3.micro".into(),
                    ..Default::default()
                }),
                min_size: 1,
                max_size: 5,
                desired_capacity: Some(3),
                health_check_type: "ELB".into(),
                health_check_grace_period_seconds: Some(120),
                target_groups: vec!["web-tg".into()],
                lifecycle_hooks: vec![LifecycleHook {
                    name: "warm".into(),
                    transition: "autoscaling:EC2_INSTANCE_LAUNCHING".into(),
                    heartbeat_timeout_seconds: Some(3600),
                    default_result: "ABANDON".into(),
                    ..Default::default()
                }],
                suspended_processes: vec!["AZRebalance".into()],
                ..Default::default()
            }),
            status: Some(AutoScalingGroupStatus {
                desired_capacity: 3,
                in_service: 1,
                in_service_by_zone: [("az-a".to_string(), 1)].into_iter().collect(),
                launch_template_version: 2,
                instances: vec![
                    AutoScalingInstance {
                        in_service_at: ts(500),
                        ..instance("web-abc12", "InService", &[])
                    },
                    instance("web-def34", "Pending:Wait", &[("warm", "")]),
                    instance("web-ghi56", "Pending:Wait", &[("warm", "CONTINUE")]),
                    AutoScalingInstance {
                        health_status: "Unhealthy".into(),
                        reason: "Instance stopped unexpectedly.".into(),
                        ..instance("web-old01", "Terminating", &[])
                    },
                ],
                instance_refresh: Some(InstanceRefresh {
                    id: "1".into(),
                    status: "InProgress".into(),
                    status_reason: "Waiting for instances to warm up.".into(),
                    percentage_complete: 50,
                    instances_to_update: 2,
                    start_time: ts(300),
                    launch_template_version: 2,
                    min_healthy_percentage: 90,
                    ..Default::default()
                }),
                activities: vec![
                    activity(1, "Successful", 3000, Some(2900)),
                    ScalingActivity {
                        status_message: "image web-v2 not found".into(),
                        ..activity(2, "Failed", 700, Some(650))
                    },
                    activity(3, "InProgress", 30, None),
                ],
                activity_count: 3,
                ..Default::default()
            }),
        }
    }

    fn parse(argv: &[&str]) -> Result<Command, clap::Error> {
        match Cli::try_parse_from(argv)?.command {
            UserCommand::Asg(a) => Ok(a.command),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn complete_lifecycle_action_parses_aws_flags() {
        let c = parse(&[
            "hanul",
            "asg",
            "complete-lifecycle-action",
            "web",
            "--hook",
            "h",
            "--instance",
            "web-abc12",
            "--result",
            "CONTINUE",
        ])
        .unwrap();
        let Command::CompleteLifecycleAction(a) = c else {
            panic!("parsed as {c:?}")
        };
        assert_eq!(a.action.group, "web");
        assert_eq!(a.action.hook, "h");
        assert_eq!(a.action.instance, "web-abc12");
        assert_eq!(a.result, LifecycleResult::Continue);
    }

    #[test]
    fn lifecycle_results_other_than_continue_and_abandon_are_refused() {
        let with = |result: &str| {
            parse(&[
                "hanul",
                "asg",
                "complete-lifecycle-action",
                "web",
                "--hook",
                "h",
                "--instance",
                "web-abc12",
                "--result",
                result,
            ])
        };
        let Command::CompleteLifecycleAction(a) = with("ABANDON").unwrap() else {
            panic!()
        };
        assert_eq!(a.result, LifecycleResult::Abandon);
        for bad in ["continue", "DEFAULT", ""] {
            let err = with(bad).unwrap_err().to_string();
            assert!(err.contains("CONTINUE") && err.contains("ABANDON"), "{err}");
        }
        // The result is required.
        assert!(
            parse(&[
                "hanul",
                "asg",
                "complete-lifecycle-action",
                "web",
                "--hook",
                "h",
                "--instance",
                "web-abc12",
            ])
            .is_err()
        );
    }

    #[test]
    fn the_other_asg_verbs_parse() {
        for argv in [
            &["hanul", "asg", "activities", "web"][..],
            &["hanul", "asg", "activities", "asg/web", "-o", "json"],
            &[
                "hanul",
                "asg",
                "record-heartbeat",
                "web",
                "--hook",
                "h",
                "--instance",
                "web-abc12",
            ],
            &["hanul", "asg", "start-instance-refresh", "web"],
            &["hanul", "asg", "cancel-instance-refresh", "web"],
        ] {
            if let Err(e) = parse(argv) {
                panic!("{argv:?}: {e}");
            }
        }
        assert!(parse(&["hanul", "asg", "activities", "web", "-o", "yaml"]).is_err());
        assert!(parse(&["hanul", "asg", "record-heartbeat", "web", "--hook", "h"]).is_err());
    }

    #[test]
    fn activities_print_newest_first_with_ages_and_failure_messages() {
        let g = web();
        let text = activities_table(newest_first(&g), NOW).render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(
            lines[0].starts_with("ID   STATUS   ") && lines[0].contains("   DESCRIPTION   "),
            "{text}"
        );
        assert!(lines[0].ends_with("CAUSE"), "{text}");
        let ids: Vec<&str> = lines[1..]
            .iter()
            .map(|l| l.split_whitespace().next().unwrap())
            .collect();
        assert_eq!(ids, ["3", "2", "1"]);
        assert!(lines[1].contains("InProgress") && lines[1].contains("30s ago   <none>"));
        assert!(
            lines[2].contains("Failed: image web-v2 not found   11m ago   10m ago"),
            "{text}"
        );
        assert!(lines[3].contains("Launching a new EC2 instance: web-1"));
        assert!(lines[3].contains("50m ago   48m ago"), "{text}");
    }

    #[test]
    fn activities_json_is_newest_first_with_every_field() {
        let v: serde_json::Value = serde_json::from_str(&activities_json(&web()).unwrap()).unwrap();
        let items = v["activities"].as_array().unwrap();
        assert_eq!(items.len(), 3);
        assert_eq!(items[0]["statusCode"], "InProgress");
        assert_eq!(items[1]["statusMessage"], "image web-v2 not found");
        assert_eq!(items[2]["instance"], "web-1");
        let empty = AutoScalingGroup::default();
        assert_eq!(
            activities_json(&empty).unwrap(),
            "{\n  \"activities\": []\n}\n"
        );
    }

    #[test]
    fn a_lifecycle_action_needs_the_hook_and_an_instance_waiting_for_it() {
        let g = web();
        let wait = active_lifecycle_action(&g, "warm", "web-def34").unwrap();
        assert_eq!(wait.hook, "warm");

        let err = |hook: &str, instance: &str| {
            active_lifecycle_action(&g, hook, instance)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err("drain", "web-def34"),
            "autoscalinggroup/web has no lifecycle hook \"drain\" (its hooks: warm)"
        );
        let none = "No active Lifecycle Action found with instance ID";
        for (instance, why) in [
            ("web-zzz99", "it is not an instance of autoscalinggroup/web"),
            (
                "web-abc12",
                "it is InService, not waiting at a lifecycle hook",
            ),
            ("web-ghi56", "already complete (CONTINUE)"),
        ] {
            let e = err("warm", instance);
            assert!(e.starts_with(&format!("{none} {instance}: ")), "{e}");
            assert!(e.contains(why), "{e}");
        }

        // In a wait state, but for another hook only.
        let mut g = web();
        g.spec
            .as_mut()
            .unwrap()
            .lifecycle_hooks
            .push(LifecycleHook {
                name: "drain".into(),
                transition: "autoscaling:EC2_INSTANCE_TERMINATING".into(),
                ..Default::default()
            });
        let e = active_lifecycle_action(&g, "drain", "web-def34")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("it is Pending:Wait waiting for warm, not for hook \"drain\""),
            "{e}"
        );

        let mut bare = web();
        bare.spec.as_mut().unwrap().lifecycle_hooks.clear();
        let e = active_lifecycle_action(&bare, "warm", "web-def34")
            .unwrap_err()
            .to_string();
        assert!(e.ends_with("(it has none)"), "{e}");
    }

    #[test]
    fn a_refresh_starts_only_when_none_is_going_and_cancels_only_when_one_is() {
        let mut g = web();
        let e = check_refresh(&g, false).unwrap_err().to_string();
        assert!(
            e.contains("an instance refresh is already InProgress (50% complete)"),
            "{e}"
        );
        assert!(e.contains("hanul asg cancel-instance-refresh web"), "{e}");
        check_refresh(&g, true).unwrap();

        let status = g.status.as_mut().unwrap();
        status.instance_refresh.as_mut().unwrap().status = "Successful".into();
        check_refresh(&g, false).unwrap();
        assert_eq!(
            check_refresh(&g, true).unwrap_err().to_string(),
            "autoscalinggroup/web: no instance refresh in progress (the last one is Successful)"
        );

        g.status.as_mut().unwrap().instance_refresh = None;
        assert_eq!(
            check_refresh(&g, true).unwrap_err().to_string(),
            "autoscalinggroup/web: no instance refresh in progress"
        );
        check_refresh(&g, false).unwrap();
    }
}
