//! Bearer-token authentication.
//!
//! On first start the server writes two random tokens into its data dir (mode 0600):
//! `admin.token` for people and the CLI, `join.token` for agents joining the cluster. Every call
//! must carry one as `authorization: Bearer <token>`; anything else is `UNAUTHENTICATED`.

use rand::Rng;
use std::{
    fs,
    io::{self, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::Path,
    sync::Arc,
};
use tonic::{Request, Status};

/// Who a token belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Principal {
    Admin,
    /// An agent that joined with the join token.
    Agent,
}

/// The tokens the server accepts.
#[derive(Clone, Debug)]
pub struct Tokens {
    admin: Arc<str>,
    join: Arc<str>,
}

pub const ADMIN_TOKEN_FILE: &str = "admin.token";
pub const JOIN_TOKEN_FILE: &str = "join.token";

impl Tokens {
    /// Reads the tokens from `dir`, creating missing ones.
    pub fn load_or_create(dir: &Path) -> io::Result<Tokens> {
        Ok(Tokens {
            admin: load_or_create(&dir.join(ADMIN_TOKEN_FILE))?.into(),
            join: load_or_create(&dir.join(JOIN_TOKEN_FILE))?.into(),
        })
    }

    /// Fixed tokens, for tests.
    pub fn new(admin: &str, join: &str) -> Tokens {
        Tokens {
            admin: admin.into(),
            join: join.into(),
        }
    }

    pub fn admin(&self) -> &str {
        &self.admin
    }

    pub fn join(&self) -> &str {
        &self.join
    }

    /// Checks the request's bearer token.
    pub fn authenticate<T>(&self, req: &Request<T>) -> Result<Principal, Status> {
        let header = req.metadata().get("authorization").ok_or_else(|| {
            Status::unauthenticated("missing bearer token: pass --token-file or set HANUL_TOKEN")
        })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or_else(|| {
                Status::unauthenticated(
                    "malformed authorization header: expected \"Bearer <token>\"",
                )
            })?;
        if constant_time_eq(token.as_bytes(), self.admin.as_bytes()) {
            Ok(Principal::Admin)
        } else if constant_time_eq(token.as_bytes(), self.join.as_bytes()) {
            Ok(Principal::Agent)
        } else {
            Err(Status::unauthenticated("invalid bearer token"))
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn load_or_create(path: &Path) -> io::Result<String> {
    match fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let bytes: [u8; 24] = rand::rng().random();
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(format!("{token}\n").as_bytes())?;
    f.sync_all()?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600))?;
    fs::rename(&tmp, path)?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_created_once_with_mode_0600_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = Tokens::load_or_create(dir.path()).unwrap();
        let mode = fs::metadata(dir.path().join(ADMIN_TOKEN_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = Tokens::load_or_create(dir.path()).unwrap();
        assert_eq!(a.admin(), b.admin());
        assert_ne!(a.admin(), a.join());
    }

    #[test]
    fn only_known_bearer_tokens_authenticate() {
        let t = Tokens::new("adm", "jn");
        let req = |v: &str| {
            let mut r = Request::new(());
            r.metadata_mut().insert("authorization", v.parse().unwrap());
            r
        };
        assert_eq!(
            t.authenticate(&req("Bearer adm")).unwrap(),
            Principal::Admin
        );
        assert_eq!(t.authenticate(&req("Bearer jn")).unwrap(), Principal::Agent);
        assert_eq!(
            t.authenticate(&req("Bearer nope")).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            t.authenticate(&req("adm")).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            t.authenticate(&Request::new(())).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
    }
}
