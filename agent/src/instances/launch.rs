//! From an `Instance`, its `Image` and its `InstanceType` to the driver's [`LaunchSpec`], and the
//! instance's directory around it.
//!
//! ```text
//!  DATA_DIR/instances/<name>/          the instance's root (its working directory by default)
//!      logs/console.log                 kept across stops (the console output)
//!      .hanul/                          the driver's files: user data and its marker (kept)
//!      <image files>, anything written  the instance store: wiped on stop
//!      volumes/<volume> -> DATA_DIR/volumes/<volume>   EBS-style, survive stop and terminate
//! ```

use crate::driver::{LaunchSpec, Limits};
use hanul_proto::v1::{ImageSpec, InstanceSpec, InstanceTypeSpec};
use nix::unistd::{Gid, Uid, User, chown};
use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Entries of an instance's root that a stop keeps: the logs and the driver's files.
const KEPT_ON_STOP: &[&str] = &["logs", ".hanul"];
/// Marks that the image's files were copied into the root since the last wipe.
const FILES_DONE: &str = ".hanul/files.done";
/// The `PATH` of an instance (nothing is inherited from the agent).
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where an agent keeps instances and volumes.
#[derive(Clone, Debug)]
pub struct Dirs {
    pub instances: PathBuf,
    pub volumes: PathBuf,
}

impl Dirs {
    pub fn new(data_dir: &Path) -> Dirs {
        Dirs {
            instances: data_dir.join("instances"),
            volumes: data_dir.join("volumes"),
        }
    }

    pub fn root(&self, instance: &str) -> PathBuf {
        self.instances.join(instance)
    }

    pub fn volume(&self, volume: &str) -> PathBuf {
        self.volumes.join(volume)
    }
}

/// What the agent knows about where an instance runs, for its environment.
#[derive(Clone, Debug)]
pub struct Placement<'a> {
    pub instance: &'a str,
    pub node: &'a str,
    pub zone: &'a str,
    /// `http://host:port/<instance>/latest`.
    pub metadata_url: String,
    pub ports: &'a BTreeMap<String, u32>,
}

/// The limits of an instance type: its vCPUs as a CPU quota, its memory, and its pids limit
/// (1024 per vCPU unless the type says).
pub fn limits(t: &InstanceTypeSpec) -> Limits {
    Limits {
        cpu_millis: t.vcpu.saturating_mul(1000),
        memory_mib: t.memory_mib,
        pids: if t.pids_limit > 0 {
            t.pids_limit
        } else {
            t.vcpu.max(1).saturating_mul(1024)
        },
    }
}

/// The `PORT_<NAME>` variable of a port name (`admin-ui` → `PORT_ADMIN_UI`).
pub fn port_variable(name: &str) -> String {
    format!("PORT_{}", name.to_ascii_uppercase().replace('-', "_"))
}

/// Builds what the driver runs. The environment is the image's, then the instance's, then
/// hanul's own variables (which win): `PORT` (the first port), `PORT_<NAME>`,
/// `HANUL_INSTANCE_ID`, `HANUL_ZONE`, `HANUL_NODE`, `HANUL_METADATA_URL`.
pub fn launch_spec(
    instance: &InstanceSpec,
    image: &ImageSpec,
    instance_type: &InstanceTypeSpec,
    root: &Path,
    at: &Placement<'_>,
) -> LaunchSpec {
    let mut env = BTreeMap::new();
    env.insert("PATH".to_string(), PATH.to_string());
    env.insert("HOME".to_string(), root.display().to_string());
    env.extend(image.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.extend(instance.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    if let Some(first) = instance.ports.first().and_then(|p| at.ports.get(&p.name)) {
        env.insert("PORT".to_string(), first.to_string());
    }
    for (name, port) in at.ports {
        env.insert(port_variable(name), port.to_string());
    }
    env.insert("HANUL_INSTANCE_ID".to_string(), at.instance.to_string());
    env.insert("HANUL_ZONE".to_string(), at.zone.to_string());
    env.insert("HANUL_NODE".to_string(), at.node.to_string());
    env.insert("HANUL_METADATA_URL".to_string(), at.metadata_url.clone());
    let mut command = image.command.clone();
    command.extend(image.args.iter().cloned());
    LaunchSpec {
        instance: at.instance.to_string(),
        root: root.to_owned(),
        command,
        env,
        working_dir: (!image.working_dir.is_empty()).then(|| PathBuf::from(&image.working_dir)),
        user: if image.user.is_empty() {
            "nobody".to_string()
        } else {
            image.user.clone()
        },
        limits: limits(instance_type),
        user_data: (!instance.user_data.is_empty()).then(|| instance.user_data.clone()),
    }
}

/// The uid and gid of `user` (`None` when the agent is not root: it cannot give files away).
fn owner(user: &str) -> io::Result<Option<(Uid, Gid)>> {
    if !Uid::effective().is_root() {
        return Ok(None);
    }
    match User::from_name(user) {
        Ok(Some(u)) => Ok(Some((u.uid, u.gid))),
        Ok(None) => Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no user {user:?} on this node"),
        )),
        Err(e) => Err(io::Error::from(e)),
    }
}

fn give(path: &Path, to: Option<(Uid, Gid)>) -> io::Result<()> {
    if let Some((uid, gid)) = to {
        chown(path, Some(uid), Some(gid)).map_err(io::Error::from)?;
    }
    Ok(())
}

/// Prepares the root before a launch: the image's files (once per boot after a wipe) and the
/// volume links. `volumes` are `(volume name, mount path relative to the root)`.
pub fn prepare_root(
    root: &Path,
    image: &ImageSpec,
    user: &str,
    volumes: &[(String, PathBuf)],
    dirs: &Dirs,
) -> io::Result<()> {
    let to = owner(user)?;
    fs::create_dir_all(root.join(".hanul"))?;
    give(root, to)?;
    let done = root.join(FILES_DONE);
    if !image.files.is_empty() && !done.exists() {
        let from = Path::new(&image.files);
        if from.is_dir() {
            copy_tree(from, root, to)?;
        } else if image.files.ends_with(".tar.gz") || image.files.ends_with(".tgz") {
            extract(from, root)?;
            chown_tree(root, to)?;
        } else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "image files {:?} is neither a directory nor a .tar.gz on this node",
                    image.files
                ),
            ));
        }
        fs::write(&done, b"")?;
    }
    for (volume, mount) in volumes {
        let data = dirs.volume(volume);
        if !data.exists() {
            fs::create_dir_all(&data)?;
            give(&data, to)?;
        }
        let link = root.join(mount);
        if let Some(parent) = link.parent() {
            fs::create_dir_all(parent)?;
        }
        match fs::read_link(&link) {
            Ok(target) if target == data => continue,
            Ok(_) => fs::remove_file(&link)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "{} exists in the instance and is not the volume {volume:?}",
                        link.display()
                    ),
                ));
            }
        }
        std::os::unix::fs::symlink(&data, &link)?;
    }
    Ok(())
}

/// Wipes the instance store: everything in the root but the logs and the driver's files. The
/// volume links go too (their data lives outside the root); a launch makes them again.
pub fn wipe_instance_store(root: &Path) -> io::Result<()> {
    let entries = match fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if KEPT_ON_STOP.iter().any(|k| entry.file_name() == *k) {
            continue;
        }
        remove_any(&entry.path())?;
    }
    match fs::remove_file(root.join(FILES_DONE)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Removes a file, a link (not what it points to) or a directory tree.
pub fn remove_any(path: &Path) -> io::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if meta.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    }
}

fn copy_tree(from: &Path, to: &Path, owner: Option<(Uid, Gid)>) -> io::Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        let ty = entry.file_type()?;
        if ty.is_dir() {
            copy_tree(&entry.path(), &target, owner)?;
            give(&target, owner)?;
        } else if ty.is_symlink() {
            let _ = fs::remove_file(&target);
            std::os::unix::fs::symlink(fs::read_link(entry.path())?, &target)?;
        } else {
            fs::copy(entry.path(), &target)?;
            give(&target, owner)?;
        }
    }
    Ok(())
}

fn chown_tree(path: &Path, owner: Option<(Uid, Gid)>) -> io::Result<()> {
    if owner.is_none() {
        return Ok(());
    }
    give(path, owner)?;
    if fs::symlink_metadata(path)?.is_dir() {
        for entry in fs::read_dir(path)? {
            chown_tree(&entry?.path(), owner)?;
        }
    }
    Ok(())
}

/// Unpacks a .tar.gz with the system's `tar` (a child the agent's reaper watches).
fn extract(archive: &Path, into: &Path) -> io::Result<()> {
    let mut cmd = std::process::Command::new("tar");
    cmd.arg("-xzf")
        .arg(archive)
        .arg("-C")
        .arg(into)
        .arg("--no-same-owner")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let (code, signal) = crate::driver::run_tool(&mut cmd)?;
    if code == Some(0) {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "tar -xzf {} failed (exit {:?}, signal {:?})",
            archive.display(),
            code,
            signal
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hanul_proto::v1::InstancePort;

    #[test]
    fn the_environment_layers_image_instance_and_hanul() {
        let image = ImageSpec {
            command: vec!["python3".into(), "-m".into()],
            args: vec!["http.server".into()],
            env: [("A".into(), "image".into()), ("B".into(), "image".into())].into(),
            ..Default::default()
        };
        let instance = InstanceSpec {
            env: [("B".into(), "instance".into()), ("PORT".into(), "1".into())].into(),
            ports: vec![
                InstancePort {
                    name: "http".into(),
                    protocol: "tcp".into(),
                },
                InstancePort {
                    name: "admin-ui".into(),
                    protocol: "tcp".into(),
                },
            ],
            user_data: "echo hi".into(),
            ..Default::default()
        };
        let t = InstanceTypeSpec {
            vcpu: 2,
            memory_mib: 1024,
            ..Default::default()
        };
        let ports: BTreeMap<String, u32> =
            [("http".into(), 30001), ("admin-ui".into(), 30002)].into();
        let at = Placement {
            instance: "web-1",
            node: "n1",
            zone: "az-a",
            metadata_url: "http://127.0.0.1:9/web-1/latest".into(),
            ports: &ports,
        };
        let spec = launch_spec(&instance, &image, &t, Path::new("/x/web-1"), &at);
        assert_eq!(spec.command, ["python3", "-m", "http.server"]);
        assert_eq!(spec.env["A"], "image");
        assert_eq!(spec.env["B"], "instance");
        assert_eq!(spec.env["PORT"], "30001");
        assert_eq!(spec.env["PORT_HTTP"], "30001");
        assert_eq!(spec.env["PORT_ADMIN_UI"], "30002");
        assert_eq!(spec.env["HANUL_INSTANCE_ID"], "web-1");
        assert_eq!(
            spec.env["HANUL_METADATA_URL"],
            "http://127.0.0.1:9/web-1/latest"
        );
        assert_eq!(spec.user, "nobody");
        assert_eq!(spec.user_data.as_deref(), Some("echo hi"));
        assert_eq!(
            spec.limits,
            Limits {
                cpu_millis: 2000,
                memory_mib: 1024,
                pids: 2048
            }
        );
    }

    #[test]
    fn a_stop_wipes_the_instance_store_but_keeps_logs_and_volume_data() {
        let tmp = tempfile::tempdir().unwrap();
        let dirs = Dirs::new(tmp.path());
        let root = dirs.root("i1");
        let files = tmp.path().join("image");
        fs::create_dir_all(files.join("www")).unwrap();
        fs::write(files.join("www/index.html"), "hello").unwrap();
        let image = ImageSpec {
            files: files.display().to_string(),
            ..Default::default()
        };
        let vols = vec![("data".to_string(), PathBuf::from("volumes/data"))];
        prepare_root(&root, &image, "root", &vols, &dirs).unwrap();
        assert_eq!(
            fs::read_to_string(root.join("www/index.html")).unwrap(),
            "hello"
        );
        fs::write(root.join("volumes/data/kept"), "v").unwrap();
        fs::write(root.join("scratch"), "s").unwrap();
        fs::create_dir_all(root.join("logs")).unwrap();
        fs::write(root.join("logs/console.log"), "log").unwrap();

        wipe_instance_store(&root).unwrap();
        assert!(!root.join("scratch").exists());
        assert!(!root.join("www").exists());
        assert!(root.join("logs/console.log").exists());
        assert_eq!(
            fs::read_to_string(dirs.volume("data").join("kept")).unwrap(),
            "v"
        );
        // The next boot copies the files and links the volume again.
        prepare_root(&root, &image, "root", &vols, &dirs).unwrap();
        assert!(root.join("www/index.html").exists());
        assert_eq!(
            fs::read_to_string(root.join("volumes/data/kept")).unwrap(),
            "v"
        );
    }
}
