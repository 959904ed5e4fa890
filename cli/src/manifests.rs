//! Reading the `-f FILE|DIR|-` arguments of `apply`, `delete` and `diff`: every file is read and
//! every document parsed before anything is sent, so that one bad document changes nothing.
//!
//! Reading is synchronous: it happens once, before the first call to the server, in a CLI that
//! does nothing else meanwhile.

use hanul_proto::{Kind, manifest::ManifestObject};
use std::{
    collections::HashMap,
    io::Read,
    path::{Path, PathBuf},
};

/// File extensions taken from a directory.
const EXTENSIONS: &[&str] = &["yaml", "yml", "json"];

/// Kinds that others refer to by name, applied first (in this order) so that an Instance
/// finds its Image, InstanceType and Volumes. Every other kind keeps file order after them.
const APPLY_FIRST: &[Kind] = &[Kind::Node, Kind::InstanceType, Kind::Image, Kind::Volume];

/// The sources named by `-f` arguments: files as given, directories expanded to their
/// `*.yaml`, `*.yml` and `*.json` files sorted by name, `-` as standard input.
pub fn expand(args: &[String]) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for a in args {
        let p = PathBuf::from(a);
        if a == "-" || !p.is_dir() {
            out.push(p);
            continue;
        }
        let entries = std::fs::read_dir(&p).map_err(|e| format!("{a}: cannot read: {e}"))?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|f| {
                f.is_file()
                    && f.extension()
                        .and_then(|e| e.to_str())
                        .is_some_and(|e| EXTENSIONS.contains(&e))
            })
            .collect();
        if files.is_empty() {
            return Err(format!(
                "{a}: no manifests in directory (looked for *.yaml, *.yml, *.json)"
            ));
        }
        files.sort();
        out.extend(files);
    }
    Ok(out)
}

/// Reads and parses every source. On failure returns every error found (each naming its file,
/// document and field), not just the first.
pub fn load(args: &[String]) -> Result<Vec<ManifestObject>, Vec<String>> {
    if args.is_empty() {
        return Err(vec!["no manifests: pass -f FILE, -f DIR or -f -".into()]);
    }
    let paths = expand(args).map_err(|e| vec![e])?;
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    for path in &paths {
        let (name, text) = match read_source(path) {
            Ok(x) => x,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        match hanul_proto::manifest::parse(&name, &text) {
            Ok(objs) => objects.extend(objs),
            Err(e) => errors.push(e.to_string()),
        }
    }
    errors.extend(duplicates(&objects));
    if !errors.is_empty() {
        return Err(errors);
    }
    if objects.is_empty() {
        let names: Vec<&str> = args
            .iter()
            .map(|a| if a == "-" { "standard input" } else { a })
            .collect();
        return Err(vec![format!("no objects in {}", names.join(", "))]);
    }
    Ok(objects)
}

fn read_source(path: &Path) -> Result<(String, String), String> {
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| format!("standard input: cannot read: {e}"))?;
        return Ok(("<stdin>".into(), text));
    }
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{name}: cannot read: {e}"))?;
    Ok((name, text))
}

/// An object named twice would be applied twice, the second silently winning; say so instead.
fn duplicates(objects: &[ManifestObject]) -> Vec<String> {
    let mut seen: HashMap<String, &ManifestObject> = HashMap::new();
    let mut errors = Vec::new();
    for o in objects {
        let key = o.object.key();
        if let Some(first) = seen.get(&key) {
            errors.push(format!(
                "{}: document {}: {key} is also defined in {} document {}",
                o.source_name, o.index, first.source_name, first.index
            ));
        } else {
            seen.insert(key, o);
        }
    }
    errors
}

fn apply_rank(kind: Option<Kind>) -> usize {
    kind.and_then(|k| APPLY_FIRST.iter().position(|f| *f == k))
        .unwrap_or(APPLY_FIRST.len())
}

/// Orders objects so that what is referred to is applied before what refers to it
/// (InstanceTypes, Images and Volumes before Instances); otherwise file order. Stable.
pub fn apply_order(objects: &mut [ManifestObject]) {
    objects.sort_by_key(|o| apply_rank(o.object.kind()));
}

/// The reverse of [`apply_order`]: dependents are deleted before what they use.
pub fn delete_order(objects: &mut [ManifestObject]) {
    apply_order(objects);
    objects.reverse();
}

#[cfg(test)]
mod tests {
    use super::*;

    const STACK: &str = r#"
apiVersion: hanul/v1
kind: Instance
metadata: {name: web-1}
spec: {image: web-v1}
---
apiVersion: hanul/v1
kind: Image
metadata: {name: web-v1}
spec: {command: [sleep, "100"]}
---
apiVersion: hanul/v1
kind: Instance
metadata: {name: web-2}
spec: {image: web-v1}
---
apiVersion: hanul/v1
kind: Volume
metadata: {name: data}
spec: {sizeGib: 1}
---
apiVersion: hanul/v1
kind: InstanceType
metadata: {name: big}
spec: {vcpu: 8, memoryMib: 16384}
"#;

    fn keys(objs: &[ManifestObject]) -> Vec<String> {
        objs.iter().map(|o| o.object.key()).collect()
    }

    #[test]
    fn referenced_kinds_are_applied_before_instances_and_file_order_is_kept_otherwise() {
        let mut objs = hanul_proto::manifest::parse("s.yaml", STACK).unwrap();
        apply_order(&mut objs);
        assert_eq!(
            keys(&objs),
            [
                "InstanceType/big",
                "Image/web-v1",
                "Volume/data",
                "Instance/web-1",
                "Instance/web-2"
            ]
        );
        delete_order(&mut objs);
        assert_eq!(keys(&objs)[0], "Instance/web-2");
        assert_eq!(keys(&objs)[4], "InstanceType/big");
    }

    #[test]
    fn directories_yield_their_manifests_sorted_and_other_files_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("b.yaml"), "").unwrap();
        std::fs::write(d.join("a.json"), "").unwrap();
        std::fs::write(d.join("c.yml"), "").unwrap();
        std::fs::write(d.join("README.md"), "").unwrap();
        let got = expand(&[d.display().to_string()]).unwrap();
        let names: Vec<_> = got
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a.json", "b.yaml", "c.yml"]);
        let empty = tempfile::tempdir().unwrap();
        assert!(expand(&[empty.path().display().to_string()]).is_err());
    }

    #[test]
    fn every_bad_file_is_reported_not_just_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("good.yaml"), STACK).unwrap();
        std::fs::write(
            d.join("bad1.yaml"),
            "apiVersion: hanul/v1\nkind: Image\nmetadata: {name: x}\nspec: {comand: [a]}\n",
        )
        .unwrap();
        std::fs::write(d.join("bad2.yaml"), "kind: Bucket\n").unwrap();
        let errs = load(&[d.display().to_string()]).unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(
            errs[0].contains("bad1.yaml") && errs[0].contains("spec.comand"),
            "{errs:?}"
        );
        assert!(errs[1].contains("bad2.yaml"), "{errs:?}");
        let missing = load(&["/nonexistent.yaml".into()]).unwrap_err();
        assert!(missing[0].contains("/nonexistent.yaml"), "{missing:?}");
    }

    #[test]
    fn an_object_defined_twice_is_an_error_naming_both_places() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.yaml");
        let b = dir.path().join("b.yaml");
        std::fs::write(&a, STACK).unwrap();
        std::fs::write(
            &b,
            "apiVersion: hanul/v1\nkind: Volume\nmetadata: {name: data}\nspec: {sizeGib: 2}\n",
        )
        .unwrap();
        let errs = load(&[a.display().to_string(), b.display().to_string()]).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0].contains("Volume/data") && errs[0].contains("document 4"),
            "{errs:?}"
        );
    }
}
