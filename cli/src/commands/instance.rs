//! `hanul instance start|stop|reboot|terminate NAME...`: EC2's StartInstances, StopInstances,
//! RebootInstances and TerminateInstances.
//!
//! Start, stop and terminate set the instance's wanted state (`spec.state`), as editing the
//! manifest would; reboot asks the agent through an annotation (the instance stays `running`).
//! With `--wait` the command returns once the instance reached the state it asked for.

use super::{name_of_kind, parse_duration, request_stamp, update_retrying};
use anyhow::{Result, bail};
use hanul_proto::{
    Client, Kind,
    instance::{DesiredState, InstanceState, REBOOT_ANNOTATION},
    v1::Object,
};
use std::{process::ExitCode, time::Duration};
use tokio::time::Instant;

/// What to do to the instances.
#[derive(Clone, Copy, Debug, clap::ValueEnum, PartialEq, Eq)]
pub enum Verb {
    Start,
    Stop,
    Reboot,
    Terminate,
}

/// Arguments of `hanul instance`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// start, stop, reboot or terminate.
    pub verb: Verb,
    /// Instance names (`web-1` or `instance/web-1`).
    #[arg(required = true, value_name = "NAME")]
    pub names: Vec<String>,
    /// Wait until each instance is running (start, reboot), stopped or terminated.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub timeout: Duration,
}

fn observed(o: &Object) -> Option<InstanceState> {
    o.as_instance()?
        .status
        .as_ref()
        .and_then(|s| InstanceState::parse(&s.state))
}

/// Changes one instance, retrying when someone else wrote it in between.
async fn change(client: &Client, name: &str, verb: Verb) -> Result<Object> {
    update_retrying(client, Kind::Instance, name, |o| {
        let Some(i) = o.as_instance_mut() else {
            bail!("instance/{name} is not an instance");
        };
        let spec = i.spec.get_or_insert_with(Default::default);
        match verb {
            Verb::Start => spec.state = DesiredState::Running.as_str().into(),
            Verb::Stop => spec.state = DesiredState::Stopped.as_str().into(),
            Verb::Terminate => spec.state = DesiredState::Terminated.as_str().into(),
            Verb::Reboot => {
                if spec.state != DesiredState::Running.as_str() {
                    bail!("instance/{name} is not running; start it instead");
                }
                o.metadata_mut()
                    .annotations
                    .insert(REBOOT_ANNOTATION.to_string(), request_stamp());
            }
        }
        Ok(())
    })
    .await
}

/// Whether `o` reached what `verb` asked for.
fn done(o: &Object, verb: Verb, rebooted_at: &str) -> bool {
    let state = observed(o);
    match verb {
        Verb::Start => state == Some(InstanceState::Running),
        Verb::Stop => state == Some(InstanceState::Stopped),
        Verb::Terminate => state == Some(InstanceState::Terminated),
        Verb::Reboot => o
            .as_instance()
            .and_then(|i| i.status.as_ref())
            .is_some_and(|s| {
                s.reboot_handled == rebooted_at && state == Some(InstanceState::Running)
            }),
    }
}

pub async fn run(global: &crate::GlobalArgs, args: Args) -> Result<ExitCode> {
    let client = global.connect().await?;
    let mut changed = Vec::new();
    for arg in &args.names {
        let name = name_of_kind(arg, Kind::Instance)?;
        let o = change(&client, name, args.verb).await?;
        let past = match args.verb {
            Verb::Start => "starting",
            Verb::Stop => "stopping",
            Verb::Reboot => "rebooting",
            Verb::Terminate => "terminating",
        };
        super::emit(&format!("instance/{name} {past}\n"))?;
        let reboot = o
            .metadata()
            .and_then(|m| m.annotations.get(REBOOT_ANNOTATION).cloned())
            .unwrap_or_default();
        changed.push((name.to_string(), reboot));
    }
    if !args.wait {
        return Ok(ExitCode::SUCCESS);
    }
    let deadline = Instant::now() + args.timeout;
    for (name, reboot) in changed {
        loop {
            let o = client.get(Kind::Instance, &name).await?;
            if done(&o, args.verb, &reboot) {
                let state = observed(&o).map(|s| s.as_str()).unwrap_or("unknown");
                super::emit(&format!("instance/{name} {state}\n"))?;
                break;
            }
            if Instant::now() >= deadline {
                let state = observed(&o).map(|s| s.as_str()).unwrap_or("unknown");
                bail!(
                    "timed out after {:?} waiting for instance/{name} (now {state})",
                    args.timeout
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(ExitCode::SUCCESS)
}
