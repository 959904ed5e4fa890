//! Where the CLI finds its server and token.
//!
//! `hanul dev` writes `~/.config/hanul/config.json` (or `$HANUL_CONFIG`) so that a plain
//! `hanul get ...` from another terminal works:
//!
//! ```json
//! {"server": "http://127.0.0.1:7443", "tokenFile": "/home/me/.local/share/hanul/admin.token"}
//! ```
//!
//! Precedence, highest first: flags (`--server`, `--token`, `--token-file`), the environment
//! (`HANUL_SERVER`, `HANUL_TOKEN`, `HANUL_TOKEN_FILE`), the config file, and the default server
//! [`DEFAULT_SERVER`]. Resolution is a pure function ([`resolve`]) over those three sources so
//! that the precedence is tested without touching the real environment.

use serde::{Deserialize, Serialize};
use std::{
    io,
    path::{Path, PathBuf},
};

/// The server the CLI talks to when nothing else says where.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7443";
/// Overrides the config file's path.
pub const ENV_CONFIG: &str = "HANUL_CONFIG";
/// The server URL.
pub const ENV_SERVER: &str = "HANUL_SERVER";
/// The bearer token itself.
pub const ENV_TOKEN: &str = "HANUL_TOKEN";
/// A file holding the bearer token.
pub const ENV_TOKEN_FILE: &str = "HANUL_TOKEN_FILE";

/// The config file's contents. Every field is optional.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// Where the bearer token comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenSource {
    /// The token itself.
    Literal(String),
    /// A file to read it from (trimmed).
    File(PathBuf),
    /// No token: calls are sent without one (and the server refuses them).
    None,
}

/// The server and token the CLI will use, after precedence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub server: String,
    pub token: TokenSource,
}

/// What the flags said (each `None` when not given).
#[derive(Clone, Debug, Default)]
pub struct Flags<'a> {
    pub server: Option<&'a str>,
    pub token: Option<&'a str>,
    pub token_file: Option<&'a Path>,
}

/// The config file's path: `$HANUL_CONFIG`, else `$XDG_CONFIG_HOME/hanul/config.json`, else
/// `~/.config/hanul/config.json`.
pub fn config_path() -> PathBuf {
    config_path_from(&|k| std::env::var_os(k).map(|v| v.to_string_lossy().into_owned()))
}

fn config_path_from(env: &dyn Fn(&str) -> Option<String>) -> PathBuf {
    let nonempty = |k: &str| env(k).filter(|v| !v.is_empty());
    if let Some(p) = nonempty(ENV_CONFIG) {
        return PathBuf::from(p);
    }
    let base = nonempty("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| nonempty("HOME").map(|h| Path::new(&h).join(".config")))
        .unwrap_or_else(|| PathBuf::from(".config"));
    base.join("hanul").join("config.json")
}

/// Writes the config file (creating its directory) so that later commands find `server` and
/// `token_file`; returns the path written. Used by `hanul dev`.
pub fn write_config(server: &str, token_file: &Path) -> io::Result<PathBuf> {
    let path = config_path();
    write_config_to(&path, server, token_file)?;
    Ok(path)
}

/// [`write_config`] to an explicit path.
pub fn write_config_to(path: &Path, server: &str, token_file: &Path) -> io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    // An absolute token path keeps working from any directory the user runs the CLI in.
    let token_file = std::path::absolute(token_file).unwrap_or_else(|_| token_file.to_path_buf());
    let cfg = ConfigFile {
        server: Some(server.to_string()),
        token_file: Some(token_file),
        token: None,
    };
    let mut text = serde_json::to_string_pretty(&cfg).map_err(io::Error::other)?;
    text.push('\n');
    // Write then rename, so a concurrent reader never sees half a file.
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// Reads the config file at `path`; a missing file is an empty config, a malformed one an error
/// that names the file.
pub fn read_config(path: &Path) -> anyhow::Result<ConfigFile> {
    match std::fs::read_to_string(path) {
        Ok(text) if text.trim().is_empty() => Ok(ConfigFile::default()),
        Ok(text) => serde_json::from_str(&text).map_err(|e| {
            anyhow::anyhow!(
                "config file {}: {e} (expected {{\"server\": URL, \"tokenFile\": PATH}}; \
                 set {ENV_CONFIG} to use another file)",
                path.display()
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(ConfigFile::default()),
        Err(e) => Err(anyhow::anyhow!(
            "cannot read config file {}: {e}",
            path.display()
        )),
    }
}

/// Applies the precedence flags > environment > config file > default.
pub fn resolve(
    flags: &Flags<'_>,
    env: &dyn Fn(&str) -> Option<String>,
    file: &ConfigFile,
) -> Resolved {
    let env = |k: &str| env(k).filter(|v| !v.is_empty());
    let server = flags
        .server
        .map(str::to_string)
        .or_else(|| env(ENV_SERVER))
        .or_else(|| file.server.clone())
        .unwrap_or_else(|| DEFAULT_SERVER.to_string());
    let token = if let Some(t) = flags.token {
        TokenSource::Literal(t.to_string())
    } else if let Some(f) = flags.token_file {
        TokenSource::File(f.to_path_buf())
    } else if let Some(t) = env(ENV_TOKEN) {
        TokenSource::Literal(t)
    } else if let Some(f) = env(ENV_TOKEN_FILE) {
        TokenSource::File(PathBuf::from(f))
    } else if let Some(t) = file.token.clone().filter(|t| !t.is_empty()) {
        TokenSource::Literal(t)
    } else if let Some(f) = file.token_file.clone() {
        TokenSource::File(f)
    } else {
        TokenSource::None
    };
    Resolved { server, token }
}

/// Reads the token a [`TokenSource`] names; the error names the file.
pub fn read_token(source: &TokenSource) -> anyhow::Result<String> {
    match source {
        TokenSource::Literal(t) => Ok(t.trim().to_string()),
        TokenSource::None => Ok(String::new()),
        TokenSource::File(path) => std::fs::read_to_string(path)
            .map(|t| t.trim().to_string())
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot read token file {}: {e} (the server writes admin.token in its data \
                     directory; pass --token-file or set {ENV_TOKEN})",
                    path.display()
                )
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    fn file() -> ConfigFile {
        ConfigFile {
            server: Some("http://file:1".into()),
            token_file: Some("/file/admin.token".into()),
            token: None,
        }
    }

    #[test]
    fn flags_beat_environment_which_beats_the_config_file() {
        let env = env_of(&[(ENV_SERVER, "http://env:1"), (ENV_TOKEN, "envtok")]);
        let flags = Flags {
            server: Some("http://flag:1"),
            token: None,
            token_file: Some(Path::new("/flag/token")),
        };
        let r = resolve(&flags, &env, &file());
        assert_eq!(r.server, "http://flag:1");
        assert_eq!(r.token, TokenSource::File("/flag/token".into()));

        let r = resolve(&Flags::default(), &env, &file());
        assert_eq!(r.server, "http://env:1");
        assert_eq!(r.token, TokenSource::Literal("envtok".into()));

        let r = resolve(&Flags::default(), &env_of(&[]), &file());
        assert_eq!(r.server, "http://file:1");
        assert_eq!(r.token, TokenSource::File("/file/admin.token".into()));
    }

    #[test]
    fn nothing_configured_means_the_default_server_and_no_token() {
        let r = resolve(
            &Flags::default(),
            &env_of(&[(ENV_SERVER, "")]),
            &ConfigFile::default(),
        );
        assert_eq!(r.server, DEFAULT_SERVER);
        assert_eq!(r.token, TokenSource::None);
    }

    #[test]
    fn a_token_flag_beats_a_token_file_flag() {
        let flags = Flags {
            server: None,
            token: Some("t"),
            token_file: Some(Path::new("/x")),
        };
        let r = resolve(&flags, &env_of(&[]), &ConfigFile::default());
        assert_eq!(r.token, TokenSource::Literal("t".into()));
    }

    #[test]
    fn config_path_follows_hanul_config_then_xdg_then_home() {
        assert_eq!(
            config_path_from(&env_of(&[(ENV_CONFIG, "/x/c.json"), ("HOME", "/h")])),
            PathBuf::from("/x/c.json")
        );
        assert_eq!(
            config_path_from(&env_of(&[("XDG_CONFIG_HOME", "/xdg"), ("HOME", "/h")])),
            PathBuf::from("/xdg/hanul/config.json")
        );
        assert_eq!(
            config_path_from(&env_of(&[("HOME", "/h")])),
            PathBuf::from("/h/.config/hanul/config.json")
        );
    }

    #[test]
    fn written_config_reads_back_and_tokens_are_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/config.json");
        let token = dir.path().join("admin.token");
        std::fs::write(&token, "secret\n").unwrap();
        write_config_to(&path, "http://127.0.0.1:9", &token).unwrap();
        let cfg = read_config(&path).unwrap();
        assert_eq!(cfg.server.as_deref(), Some("http://127.0.0.1:9"));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"tokenFile\""), "{text}");
        let r = resolve(&Flags::default(), &env_of(&[]), &cfg);
        assert_eq!(read_token(&r.token).unwrap(), "secret");
    }

    #[test]
    fn a_missing_config_is_empty_and_a_malformed_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        assert_eq!(read_config(&path).unwrap(), ConfigFile::default());
        std::fs::write(&path, "{\"srever\": 1}").unwrap();
        let err = read_config(&path).unwrap_err().to_string();
        assert!(err.contains("config.json"), "{err}");
        assert!(err.contains("srever"), "{err}");
    }

    #[test]
    fn a_missing_token_file_is_an_error_naming_it() {
        let err = read_token(&TokenSource::File("/nonexistent/admin.token".into()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/admin.token"), "{err}");
    }
}
