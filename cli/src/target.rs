//! The `KIND [NAME...]` and `KIND/NAME...` arguments that `get`, `describe`, `delete` and `wait`
//! take, as kubectl reads them: kinds by any name (`instances`, `instance`, `i`, `Instance`).

use anyhow::{Result, anyhow, bail};
use hanul_proto::Kind;

/// What the positional arguments name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Targets {
    /// Every object of a kind (`get instances`).
    All(Kind),
    /// Named objects, in argument order (`get i web-1 web-2`, `get i/web-1 vol/data`).
    Named(Vec<(Kind, String)>),
}

/// Finds a kind by any of its names, with an error listing the known ones.
pub fn parse_kind(name: &str) -> Result<Kind> {
    Kind::lookup(name).ok_or_else(|| {
        anyhow!(
            "the server doesn't have a resource type {name:?} (known: {}; see `hanul api-resources`)",
            Kind::known_names()
        )
    })
}

/// Reads `KIND [NAME...]` or `KIND/NAME...` (all arguments in the slash form, as kubectl
/// requires).
pub fn parse_targets(args: &[String]) -> Result<Targets> {
    let Some(first) = args.first() else {
        bail!(
            "you must specify the type of resource (known: {})",
            Kind::known_names()
        );
    };
    if first.contains('/') {
        let mut named = Vec::new();
        for a in args {
            let Some((kind, name)) = a.split_once('/') else {
                bail!(
                    "there is no need to specify a resource type as a separate argument when \
                     passing arguments in KIND/NAME form (e.g. `hanul get i/web-1`): {a:?}"
                );
            };
            if name.is_empty() || name.contains('/') {
                bail!("{a:?}: expected KIND/NAME");
            }
            named.push((parse_kind(kind)?, name.to_string()));
        }
        return Ok(Targets::Named(named));
    }
    let kind = parse_kind(first)?;
    if args.len() == 1 {
        return Ok(Targets::All(kind));
    }
    let mut named = Vec::new();
    for a in &args[1..] {
        if a.contains('/') || a.is_empty() {
            bail!("{a:?}: expected a name of kind {kind} (KIND NAME... or KIND/NAME..., not both)");
        }
        named.push((kind, a.clone()));
    }
    Ok(Targets::Named(named))
}

/// Like [`parse_targets`] but requires names: `delete` and `wait` never mean "all".
pub fn parse_named(args: &[String], verb: &str) -> Result<Vec<(Kind, String)>> {
    match parse_targets(args)? {
        Targets::Named(n) => Ok(n),
        Targets::All(kind) => bail!(
            "{verb}: name a {kind}: `hanul {verb} {} NAME` or `hanul {verb} {}/NAME`",
            kind.plural(),
            kind.plural()
        ),
    }
}

/// The lowercase kind as kubectl prints it before a name: `instance`.
pub fn lower(kind: Kind) -> String {
    kind.as_str().to_ascii_lowercase()
}

/// `instance/web-1`.
pub fn ref_name(kind: Kind, name: &str) -> String {
    format!("{}/{name}", lower(kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn slash_form_names_kind_and_object() {
        assert_eq!(
            parse_targets(&args(&["i/web-1", "volumes/data"])).unwrap(),
            Targets::Named(vec![
                (Kind::Instance, "web-1".into()),
                (Kind::Volume, "data".into())
            ])
        );
    }

    #[test]
    fn separate_kind_and_names_form_works_with_any_kind_name() {
        assert_eq!(
            parse_targets(&args(&["instances", "web-1", "web-2"])).unwrap(),
            Targets::Named(vec![
                (Kind::Instance, "web-1".into()),
                (Kind::Instance, "web-2".into())
            ])
        );
        assert_eq!(
            parse_targets(&args(&["Instance"])).unwrap(),
            Targets::All(Kind::Instance)
        );
        assert_eq!(
            parse_targets(&args(&["it"])).unwrap(),
            Targets::All(Kind::InstanceType)
        );
    }

    #[test]
    fn unknown_kinds_and_mixed_forms_are_refused_with_guidance() {
        let err = parse_targets(&args(&["buckets"])).unwrap_err().to_string();
        assert!(
            err.contains("\"buckets\"") && err.contains("instances"),
            "{err}"
        );
        assert!(parse_targets(&args(&["i/web-1", "web-2"])).is_err());
        assert!(parse_targets(&args(&["i", "vol/x"])).is_err());
        assert!(parse_targets(&args(&["i/"])).is_err());
        assert!(parse_targets(&args(&[])).is_err());
    }

    #[test]
    fn delete_and_wait_require_a_name() {
        let err = parse_named(&args(&["i"]), "delete")
            .unwrap_err()
            .to_string();
        assert!(err.contains("hanul delete instances NAME"), "{err}");
        assert_eq!(
            parse_named(&args(&["i/a"]), "wait").unwrap(),
            vec![(Kind::Instance, "a".to_string())]
        );
    }

    #[test]
    fn printed_references_use_the_lowercase_kind() {
        assert_eq!(
            ref_name(Kind::InstanceType, "t3.micro"),
            "instancetype/t3.micro"
        );
    }
}
