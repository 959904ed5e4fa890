//! `hanul scale asg NAME... --desired N`: kubectl's `scale` habit for EC2 Auto Scaling's
//! SetDesiredCapacity.
//!
//! The command sets `spec.desiredCapacity`, as editing the manifest would, and writes it with
//! the resourceVersion it read (re-reading on a conflict). The server's admission checks the
//! bounds, so an N outside `minSize..maxSize` comes back as its error naming
//! `spec.desiredCapacity`; the command does not repeat that rule.

use super::{emit, update_retrying};
use crate::target::{parse_named, ref_name};
use anyhow::{Result, bail};
use hanul_proto::{
    Kind,
    v1::{AutoScalingGroupSpec, object::Resource},
};
use std::process::ExitCode;

/// Arguments of `hanul scale`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// KIND NAME... or KIND/NAME...; only autoscalinggroups (asg) can be scaled.
    #[arg(required = true, value_name = "KIND [NAME...]")]
    pub targets: Vec<String>,
    /// The new desired capacity (between the group's minSize and maxSize).
    #[arg(
        long,
        visible_alias = "desired-capacity",
        alias = "replicas",
        value_name = "N"
    )]
    pub desired: u32,
}

/// The groups named, refusing any other kind.
pub fn scalable(targets: &[String]) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for (kind, name) in parse_named(targets, "scale")? {
        if kind != Kind::AutoScalingGroup {
            bail!(
                "{} cannot be scaled: only autoscalinggroups (asg) have a desired capacity \
                 (`hanul scale asg NAME --desired N`)",
                ref_name(kind, &name)
            );
        }
        names.push(name);
    }
    Ok(names)
}

/// Runs `hanul scale`.
pub async fn run(global: &crate::GlobalArgs, args: Args) -> Result<ExitCode> {
    let names = scalable(&args.targets)?;
    let client = global.connect().await?;
    for name in names {
        update_retrying(&client, Kind::AutoScalingGroup, &name, |o| {
            let Some(Resource::AutoScalingGroup(g)) = &mut o.resource else {
                bail!("autoscalinggroup/{name} is not an auto scaling group");
            };
            g.spec
                .get_or_insert_with(AutoScalingGroupSpec::default)
                .desired_capacity = Some(args.desired);
            Ok(())
        })
        .await?;
        emit(&format!(
            "{} scaled\n",
            ref_name(Kind::AutoScalingGroup, &name)
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cli, UserCommand};
    use clap::Parser;

    fn parse(argv: &[&str]) -> Result<Args, clap::Error> {
        match Cli::try_parse_from(argv)?.command {
            UserCommand::Scale(a) => Ok(a),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn scale_asg_parses_with_kubectl_and_aws_spellings() {
        let a = parse(&["hanul", "scale", "asg", "web", "--desired", "3"]).unwrap();
        assert_eq!(a.targets, ["asg", "web"]);
        assert_eq!(a.desired, 3);
        let a = parse(&["hanul", "scale", "asg/web", "--desired-capacity=0"]).unwrap();
        assert_eq!(a.desired, 0);
        let a = parse(&["hanul", "scale", "--replicas", "2", "asg/web"]).unwrap();
        assert_eq!(a.desired, 2);
    }

    #[test]
    fn scale_needs_a_non_negative_desired_capacity() {
        assert!(parse(&["hanul", "scale", "asg", "web"]).is_err());
        assert!(parse(&["hanul", "scale", "asg", "web", "--desired", "-1"]).is_err());
        assert!(parse(&["hanul", "scale", "asg", "web", "--desired", "many"]).is_err());
    }

    #[test]
    fn only_auto_scaling_groups_can_be_scaled() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            scalable(&args(&["asg", "web", "api"])).unwrap(),
            ["web", "api"]
        );
        assert_eq!(
            scalable(&args(&["autoscalinggroups/web"])).unwrap(),
            ["web"]
        );
        let err = scalable(&args(&["instance", "web-1"]))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("instance/web-1 cannot be scaled: only autoscalinggroups"),
            "{err}"
        );
        // A kind alone means "all" elsewhere; scale wants names.
        assert!(scalable(&args(&["asg"])).is_err());
    }
}
