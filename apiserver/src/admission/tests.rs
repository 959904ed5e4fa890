use super::*;
use hanul_proto::manifest;

fn ctx() -> Context {
    let mut instance_types: Vec<String> = builtin_catalog()
        .into_iter()
        .map(|t| t.metadata.unwrap().name)
        .collect();
    instance_types.sort();
    Context { instance_types }
}

fn obj(yaml: &str) -> Object {
    manifest::parse("t", yaml).unwrap().remove(0).object
}

fn admit(o: &mut Object, old: Option<&Object>) -> Result<()> {
    default(o);
    validate(o, old, &ctx())
}

fn message(r: Result<()>) -> String {
    match r {
        Err(Error::Invalid(v)) => v.join("; "),
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn an_instance_gets_ec2_defaults() {
    let mut o = obj(
        "apiVersion: hanul/v1\nkind: Instance\nmetadata: {name: a}\nspec: {image: web, ports: [{name: http}]}\n",
    );
    admit(&mut o, None).unwrap();
    let Some(Resource::Instance(i)) = &o.resource else {
        panic!()
    };
    let s = i.spec.as_ref().unwrap();
    assert_eq!(
        (s.instance_type.as_str(), s.state.as_str()),
        ("t3.micro", "running")
    );
    assert_eq!(
        (s.shutdown_behavior.as_str(), s.market.as_str()),
        ("stop", "on-demand")
    );
    assert_eq!(s.ports[0].protocol, "tcp");
}

#[test]
fn an_unknown_instance_type_is_named_with_the_known_ones() {
    let mut o = obj(
        "apiVersion: hanul/v1\nkind: Instance\nmetadata: {name: a}\nspec: {image: web, instanceType: t3.micr}\n",
    );
    let m = message(admit(&mut o, None));
    assert!(
        m.contains(
            "spec.instanceType: unknown instance type \"t3.micr\"; known: c5.large, m5.2xlarge"
        ),
        "{m}"
    );
}

#[test]
fn every_error_of_an_object_is_reported_at_once() {
    let mut o = obj(
        "apiVersion: hanul/v1\nkind: Instance\nmetadata: {name: Bad_Name}\nspec: {state: paused, ports: [{name: http}, {name: http}]}\n",
    );
    let m = message(admit(&mut o, None));
    for want in [
        "metadata.name",
        "spec.image: required",
        "spec.state: \"paused\" is not allowed; use one of: running, stopped, terminated",
        "spec.ports[1].name: \"http\" is used twice",
    ] {
        assert!(m.contains(want), "missing {want:?} in {m}");
    }
}

#[test]
fn a_running_instance_keeps_its_image_and_type() {
    let mut old = obj(
        "apiVersion: hanul/v1\nkind: Instance\nmetadata: {name: a}\nspec: {image: web}\nstatus: {state: running, node: n1}\n",
    );
    admit(&mut old, None).unwrap();
    let mut new = obj(
        "apiVersion: hanul/v1\nkind: Instance\nmetadata: {name: a}\nspec: {image: web2, instanceType: t3.large}\n",
    );
    let m = message(admit(&mut new, Some(&old)));
    assert!(m.contains("spec.image: is immutable"), "{m}");
    assert!(
        m.contains("spec.instanceType: can change only while the instance is stopped"),
        "{m}"
    );
}

#[test]
fn a_terminated_instance_stays_terminated() {
    for old_yaml in [
        "apiVersion: hanul/v1\nkind: Instance\nmetadata: {name: a}\nspec: {image: web, state: terminated}\n",
        "apiVersion: hanul/v1\nkind: Instance\nmetadata: {name: a}\nspec: {image: web}\nstatus: {state: terminated, node: n1}\n",
    ] {
        let mut old = obj(old_yaml);
        admit(&mut old, None).unwrap();
        let mut new = obj(
            "apiVersion: hanul/v1\nkind: Instance\nmetadata: {name: a}\nspec: {image: web, state: stopped}\n",
        );
        let m = message(admit(&mut new, Some(&old)));
        assert!(m.contains("spec.state: the instance is terminated"), "{m}");
    }
}

#[test]
fn an_instance_whose_type_was_deleted_can_still_be_updated() {
    let mut old = obj(
        "apiVersion: hanul/v1\nkind: Instance\nmetadata: {name: a}\nspec: {image: web, instanceType: gone.type}\n",
    );
    let mut ctx = ctx();
    ctx.instance_types.push("gone.type".into());
    ctx.instance_types.sort();
    default(&mut old);
    validate(&old, None, &ctx).unwrap();
    let mut new = old.clone();
    new.metadata_mut().finalizers.clear();
    admit(&mut new, Some(&old)).unwrap();
}

#[test]
fn builtin_instance_types_cannot_be_changed() {
    let old: Object = builtin_catalog().remove(0).into();
    let mut new = old.clone();
    let Some(Resource::InstanceType(t)) = &mut new.resource else {
        panic!()
    };
    t.spec.as_mut().unwrap().vcpu = 64;
    let m = message(admit(&mut new, Some(&old)));
    assert!(
        m.contains("built-in instance types cannot be changed"),
        "{m}"
    );
}

#[test]
fn a_volume_only_grows_and_keeps_its_zone() {
    let mut old = obj(
        "apiVersion: hanul/v1\nkind: Volume\nmetadata: {name: v}\nspec: {sizeGib: 10, zone: az-a}\n",
    );
    admit(&mut old, None).unwrap();
    let mut new = obj(
        "apiVersion: hanul/v1\nkind: Volume\nmetadata: {name: v}\nspec: {sizeGib: 5, zone: az-b}\n",
    );
    let m = message(admit(&mut new, Some(&old)));
    assert!(m.contains("spec.sizeGib: can only grow"), "{m}");
    assert!(m.contains("spec.zone: is immutable"), "{m}");
}

#[test]
fn labels_and_images_are_checked() {
    let mut o = obj(
        "apiVersion: hanul/v1\nkind: Image\nmetadata: {name: i, labels: {'bad key!': x}}\nspec: {files: relative/dir}\n",
    );
    let m = message(admit(&mut o, None));
    assert!(
        m.contains("metadata.labels[\"bad key!\"]: invalid key"),
        "{m}"
    );
    assert!(m.contains("spec.command: required"), "{m}");
    assert!(m.contains("spec.files"), "{m}");
}

#[test]
fn a_target_group_gets_elb_defaults() {
    let mut o = obj(
        "apiVersion: hanul/v1\nkind: TargetGroup\nmetadata: {name: web}\nspec: {port: http, targets: [{instance: web-1}], stickiness: {enabled: true}}\n",
    );
    admit(&mut o, None).unwrap();
    let Some(Resource::TargetGroup(tg)) = &o.resource else {
        panic!("{o:?}")
    };
    let spec = tg.spec.clone().unwrap();
    assert_eq!(spec.protocol, "HTTP");
    assert_eq!(spec.algorithm, "round_robin");
    assert_eq!(spec.deregistration_delay_seconds, Some(300));
    let hc = spec.health_check.unwrap();
    assert_eq!(
        (
            hc.protocol.as_str(),
            hc.path.as_str(),
            hc.port.as_str(),
            hc.matcher.as_str()
        ),
        ("HTTP", "/", "traffic-port", "200")
    );
    assert_eq!(
        (
            hc.interval_seconds,
            hc.timeout_seconds,
            hc.healthy_threshold,
            hc.unhealthy_threshold
        ),
        (30, 5, 5, 2)
    );
    let st = spec.stickiness.unwrap();
    assert_eq!(
        (st.r#type.as_str(), st.duration_seconds),
        ("lb_cookie", 86_400)
    );
}

#[test]
fn bad_target_groups_name_every_field() {
    let mut o = obj(
        "apiVersion: hanul/v1\nkind: TargetGroup\nmetadata: {name: web}\nspec:\n  protocol: UDP\n  port: http\n  targets: [{instance: a, ip: 10.0.0.1}, {ip: not-an-ip, port: 80}, {ip: 10.0.0.2}]\n  healthCheck: {port: '70000', intervalSeconds: 2, timeoutSeconds: 5, healthyThreshold: 11}\n  stickiness: {enabled: true, type: app_cookie}\n",
    );
    let m = message(admit(&mut o, None));
    for want in [
        "spec.protocol: \"UDP\" is not allowed; use one of: HTTP, TCP",
        "spec.stickiness: cookies need an HTTP target group",
        "spec.healthCheck.port: 70000 is not a port",
        "spec.targets[0]: give exactly one of instance",
        "spec.targets[1].ip: \"not-an-ip\" is not an IP address",
        "spec.targets[2].port: an ip target needs a port",
        "spec.healthCheck.timeoutSeconds: must not be longer than intervalSeconds",
        "spec.healthCheck.healthyThreshold: 1..10",
        "spec.stickiness.cookieName: required for app_cookie",
    ] {
        assert!(m.contains(want), "missing {want:?} in {m}");
    }
}

#[test]
fn load_balancers_check_listeners_and_rules() {
    let mut ok = obj(
        "apiVersion: hanul/v1\nkind: LoadBalancer\nmetadata: {name: web}\nspec:\n  listeners:\n  - port: 8080\n    defaultTargetGroup: web\n    rules:\n    - {pathPrefix: /api, targetGroup: api}\n    - {host: old.example, redirect: {host: new.example}}\n",
    );
    admit(&mut ok, None).unwrap();
    let Some(Resource::LoadBalancer(lb)) = &ok.resource else {
        panic!()
    };
    let spec = lb.spec.clone().unwrap();
    assert_eq!(spec.r#type, "application");
    assert_eq!(spec.listeners[0].protocol, "HTTP");
    assert_eq!(
        spec.listeners[0].rules[1]
            .redirect
            .as_ref()
            .unwrap()
            .status_code,
        302
    );

    let mut bad = obj(
        "apiVersion: hanul/v1\nkind: LoadBalancer\nmetadata: {name: db}\nspec:\n  type: network\n  listeners:\n  - {port: 5432, defaultTargetGroup: db, rules: [{pathPrefix: /x, targetGroup: other}]}\n  - {port: 5432, protocol: HTTP}\n",
    );
    let m = message(admit(&mut bad, None));
    for want in [
        "spec.listeners[0].rules: network load balancers have no rules",
        "spec.listeners[1].port: 5432 is used by another listener",
        "spec.listeners[1].protocol: \"HTTP\": network load balancers listen on TCP",
        "spec.listeners[1].defaultTargetGroup: required",
    ] {
        assert!(m.contains(want), "missing {want:?} in {m}");
    }
}

#[test]
fn health_check_matchers_are_http_code_lists() {
    let mut o = obj(
        "apiVersion: hanul/v1\nkind: TargetGroup\nmetadata: {name: web}\nspec: {port: '8080', healthCheck: {matcher: '200-99'}}\n",
    );
    let m = message(admit(&mut o, None));
    assert!(m.contains("spec.healthCheck.matcher: \"200-99\""), "{m}");
    let mut o = obj(
        "apiVersion: hanul/v1\nkind: TargetGroup\nmetadata: {name: web}\nspec: {port: '8080', targets: [{ip: 192.168.1.20}], healthCheck: {matcher: '200,202-299'}}\n",
    );
    admit(&mut o, None).unwrap();
}

#[test]
fn an_auto_scaling_group_gets_aws_defaults_and_its_template_the_instance_defaults() {
    let mut o = obj(
        "apiVersion: hanul/v1\nkind: AutoScalingGroup\nmetadata: {name: web}\nspec: {minSize: 2, maxSize: 4, launchTemplate: {image: web, ports: [{name: http}]}, lifecycleHooks: [{name: warm, transition: 'autoscaling:EC2_INSTANCE_LAUNCHING'}]}\n",
    );
    admit(&mut o, None).unwrap();
    let Some(Resource::AutoScalingGroup(g)) = &o.resource else {
        panic!()
    };
    let s = g.spec.as_ref().unwrap();
    assert_eq!(s.desired_capacity, Some(2));
    assert_eq!(s.health_check_type, "EC2");
    let t = s.launch_template.as_ref().unwrap();
    assert_eq!(
        (t.instance_type.as_str(), t.market.as_str()),
        ("t3.micro", "on-demand")
    );
    assert_eq!(t.ports[0].protocol, "tcp");
    let h = &s.lifecycle_hooks[0];
    assert_eq!(
        (h.heartbeat_timeout_seconds, h.default_result.as_str()),
        (Some(3600), "ABANDON")
    );
}

#[test]
fn an_auto_scaling_group_reports_every_bad_field_by_path() {
    let mut o = obj(
        "apiVersion: hanul/v1\nkind: AutoScalingGroup\nmetadata: {name: web}\nspec:\n  minSize: 3\n  maxSize: 2\n  desiredCapacity: 5\n  healthCheckType: HTTP\n  zones: [a, a]\n  terminationPolicies: [Newest]\n  suspendedProcesses: [Launch, Launch]\n  launchTemplate: {image: web, instanceType: t3.micr}\n  lifecycleHooks: [{name: 'bad name', transition: launch, heartbeatTimeoutSeconds: 5, notificationTarget: 'ftp://x'}]\n  instanceRefresh: {minHealthyPercentage: 120}\n",
    );
    let m = message(admit(&mut o, None));
    for want in [
        "spec.minSize: 3 is more than spec.maxSize (2)",
        "spec.desiredCapacity: 5 is outside spec.minSize..spec.maxSize (3..2)",
        "spec.healthCheckType: \"HTTP\" is not allowed; use one of: EC2, ELB",
        "spec.zones[1]: \"a\" is listed twice",
        "spec.terminationPolicies[0]: \"Newest\" is not allowed",
        "spec.suspendedProcesses[1]: \"Launch\" is listed twice",
        "spec.launchTemplate.instanceType: unknown instance type \"t3.micr\"",
        "spec.lifecycleHooks[0].name: \"bad name\" is not a hook name",
        "spec.lifecycleHooks[0].transition: \"launch\" is not allowed",
        "spec.lifecycleHooks[0].heartbeatTimeoutSeconds: 5 is outside 30..7200",
        "spec.lifecycleHooks[0].notificationTarget: \"ftp://x\" is not an http:// URL",
        "spec.instanceRefresh.minHealthyPercentage: 120 is outside 0..100",
    ] {
        assert!(m.contains(want), "missing {want:?} in {m}");
    }
    let mut o = obj(
        "apiVersion: hanul/v1\nkind: AutoScalingGroup\nmetadata: {name: web}\nspec: {maxSize: 1}\n",
    );
    assert!(message(admit(&mut o, None)).contains("spec.launchTemplate.image: required"));
}

#[test]
fn a_group_names_one_launch_template_inline_or_by_reference() {
    let mut both = obj(
        "apiVersion: hanul/v1\nkind: AutoScalingGroup\nmetadata: {name: web}\nspec: {maxSize: 1, launchTemplate: {image: web}, launchTemplateRef: {name: web}}\n",
    );
    assert!(message(admit(&mut both, None)).contains("not both"));
    let mut by_ref = obj(
        "apiVersion: hanul/v1\nkind: AutoScalingGroup\nmetadata: {name: web}\nspec: {maxSize: 1, launchTemplateRef: {name: web}}\n",
    );
    admit(&mut by_ref, None).unwrap();
    let Some(Resource::AutoScalingGroup(g)) = &by_ref.resource else {
        panic!()
    };
    let s = g.spec.as_ref().unwrap();
    assert_eq!(s.launch_template_ref.as_ref().unwrap().version, "$Latest");
    assert!(s.launch_template.is_none());
    let mut bad = obj(
        "apiVersion: hanul/v1\nkind: AutoScalingGroup\nmetadata: {name: web}\nspec: {maxSize: 1, launchTemplateRef: {name: web, version: newest}}\n",
    );
    assert!(message(admit(&mut bad, None)).contains(
        "spec.launchTemplateRef.version: \"newest\" is not allowed; use $Latest, $Default or a version number"
    ));
    let mut lt = obj(
        "apiVersion: hanul/v1\nkind: LaunchTemplate\nmetadata: {name: web}\nspec: {image: web, instanceType: t3.micr}\n",
    );
    assert!(message(admit(&mut lt, None)).contains("spec.instanceType: unknown instance type"));
}

mod db;
