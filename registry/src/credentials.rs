//! Registry credentials in the Docker client's configuration (`~/.docker/config.json`, or
//! `$DOCKER_CONFIG/config.json`), read and written in Docker's format so that existing Docker
//! logins work unchanged and `kiln login` is seen by `docker` too.
//!
//! Lookup follows the docker CLI (`cli/config/configfile`): a `credHelpers` entry for the
//! registry, else the `credsStore` helper, else the base64 `auth` of an `auths` entry. Helpers
//! are the `docker-credential-NAME` programs of the docker-credential-helpers protocol (`get`,
//! `store`, `erase`, JSON on stdin and stdout). Docker Hub's key is `https://index.docker.io/v1/`.
//!
//! Writing keeps every other field of the file (it is read as a JSON value); the file is
//! replaced atomically (temp file + rename) with mode 0600.

use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use serde_json::{Map, Value};

use crate::error::RegistryError;

/// The key Docker keeps Docker Hub's credentials under.
pub const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

/// A user name and secret for a registry. `username == "<token>"` marks an identity (refresh)
/// token, as credential helpers return for OAuth logins.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    /// Never prints the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Credentials {
    /// Whether the secret is an identity token rather than a password.
    pub fn is_identity_token(&self) -> bool {
        self.username == "<token>"
    }

    /// The value of an `Authorization: Basic` header.
    pub fn basic_header(&self) -> String {
        let pair = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        )
    }
}

/// The key a registry domain's credentials are stored under (`docker.io` → Docker Hub's).
pub fn config_key(domain: &str) -> String {
    if domain == kiln_cache::reference::DEFAULT_DOMAIN
        || domain == kiln_cache::reference::LEGACY_DEFAULT_DOMAIN
        || domain == "registry-1.docker.io"
    {
        DOCKER_HUB_KEY.to_string()
    } else {
        domain.to_string()
    }
}

/// The host of a config key, as Docker's `ConvertToHostname` gives it: without scheme and path.
fn key_host(key: &str) -> &str {
    let rest = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    rest.split('/').next().unwrap_or(rest)
}

/// The Docker client configuration file.
#[derive(Debug, Clone)]
pub struct DockerConfig {
    path: PathBuf,
}

impl DockerConfig {
    /// `$DOCKER_CONFIG/config.json`, else `$HOME/.docker/config.json`.
    pub fn from_env() -> DockerConfig {
        let directory = match std::env::var_os("DOCKER_CONFIG") {
            Some(directory) if !directory.is_empty() => PathBuf::from(directory),
            Some(_) | None => {
                let home =
                    std::env::var_os("HOME").map_or_else(|| PathBuf::from("/"), PathBuf::from);
                home.join(".docker")
            }
        };
        DockerConfig {
            path: directory.join("config.json"),
        }
    }

    /// A configuration file at `path`.
    pub fn at(path: impl Into<PathBuf>) -> DockerConfig {
        DockerConfig { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file as a JSON object; an empty object when it does not exist.
    fn read(&self) -> Result<Map<String, Value>, RegistryError> {
        let bytes = match fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Map::new()),
            Err(source) => {
                return Err(RegistryError::Config {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Map::new());
        }
        serde_json::from_slice(&bytes).map_err(|source| RegistryError::ConfigJson {
            path: self.path.clone(),
            source,
        })
    }

    /// Replaces the file (temp file in the same directory, mode 0600, fsync, rename).
    fn write(&self, config: &Map<String, Value>) -> Result<(), RegistryError> {
        let io_error = |source| RegistryError::Config {
            path: self.path.clone(),
            source,
        };
        let directory = self
            .path
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        fs::create_dir_all(directory).map_err(io_error)?;
        let mut text =
            serde_json::to_string_pretty(config).map_err(|source| RegistryError::ConfigJson {
                path: self.path.clone(),
                source,
            })?;
        text.push('\n');
        let temp = directory.join(format!(".config.json.kiln-{}", std::process::id()));
        let written = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)
            .and_then(|mut file| {
                file.write_all(text.as_bytes())?;
                file.sync_all()
            })
            .and_then(|()| fs::rename(&temp, &self.path));
        if written.is_err() {
            let _ = fs::remove_file(&temp);
        }
        written.map_err(io_error)
    }

    /// The helper configured for a key, if any (`credHelpers`, then `credsStore`).
    fn helper(config: &Map<String, Value>, key: &str) -> Option<String> {
        let host = key_host(key);
        config
            .get("credHelpers")
            .and_then(Value::as_object)
            .and_then(|helpers| helpers.get(key).or_else(|| helpers.get(host)))
            .and_then(Value::as_str)
            .or_else(|| config.get("credsStore").and_then(Value::as_str))
            .filter(|name| !name.is_empty())
            .map(str::to_string)
    }

    /// The credentials stored for a registry domain (`docker.io`, `localhost:5000`), if any.
    pub fn credentials(&self, domain: &str) -> Result<Option<Credentials>, RegistryError> {
        let config = self.read()?;
        let key = config_key(domain);
        if let Some(helper) = Self::helper(&config, &key) {
            return helper_get(&helper, &key);
        }
        let Some(auths) = config.get("auths").and_then(Value::as_object) else {
            return Ok(None);
        };
        let entry = auths.get(&key).or_else(|| {
            auths
                .iter()
                .find(|(candidate, _)| key_host(candidate) == key_host(&key))
                .map(|(_, entry)| entry)
        });
        let Some(entry) = entry.and_then(Value::as_object) else {
            return Ok(None);
        };
        if let Some(token) = entry
            .get("identitytoken")
            .and_then(Value::as_str)
            .filter(|token| !token.is_empty())
        {
            return Ok(Some(Credentials {
                username: "<token>".to_string(),
                password: token.to_string(),
            }));
        }
        let Some(auth) = entry.get("auth").and_then(Value::as_str) else {
            return Ok(None);
        };
        if auth.is_empty() {
            return Ok(None);
        }
        let invalid = |what: &str| RegistryError::Config {
            path: self.path.clone(),
            source: io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the auth of {key} {what}"),
            ),
        };
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| invalid("is not base64"))?;
        let decoded = String::from_utf8(decoded).map_err(|_| invalid("is not UTF-8"))?;
        let (username, password) = decoded
            .split_once(':')
            .ok_or_else(|| invalid("is not USER:PASSWORD"))?;
        Ok(Some(Credentials {
            username: username.to_string(),
            password: password.to_string(),
        }))
    }

    /// Stores credentials for a registry domain as `docker login` does: through the configured
    /// helper, else as base64 `auth` in `auths`. Returns where they went, for the message Docker
    /// prints about unencrypted storage.
    pub fn store(&self, domain: &str, credentials: &Credentials) -> Result<Stored, RegistryError> {
        let mut config = self.read()?;
        let key = config_key(domain);
        if let Some(helper) = Self::helper(&config, &key) {
            helper_store(&helper, &key, credentials)?;
            // Docker leaves an empty entry in `auths` so that the registry is listed.
            let auths = object_entry(&mut config, "auths");
            auths.insert(key, Value::Object(Map::new()));
            self.write(&config)?;
            return Ok(Stored::Helper(helper));
        }
        let auth = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", credentials.username, credentials.password));
        let auths = object_entry(&mut config, "auths");
        let mut entry = Map::new();
        entry.insert("auth".to_string(), Value::String(auth));
        auths.insert(key, Value::Object(entry));
        self.write(&config)?;
        Ok(Stored::File(self.path.clone()))
    }

    /// Removes the credentials of a registry domain. Returns whether there were any.
    pub fn erase(&self, domain: &str) -> Result<bool, RegistryError> {
        let mut config = self.read()?;
        let key = config_key(domain);
        let mut found = false;
        if let Some(helper) = Self::helper(&config, &key) {
            found |= helper_erase(&helper, &key)?;
        }
        if let Some(auths) = config.get_mut("auths").and_then(Value::as_object_mut) {
            let keys: Vec<String> = auths
                .keys()
                .filter(|candidate| **candidate == key || key_host(candidate) == key_host(&key))
                .cloned()
                .collect();
            for candidate in keys {
                auths.remove(&candidate);
                found = true;
            }
        }
        if found {
            self.write(&config)?;
        }
        Ok(found)
    }
}

/// Where [`DockerConfig::store`] put credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// In the configuration file, base64-encoded (unencrypted).
    File(PathBuf),
    /// With the named credential helper.
    Helper(String),
}

fn object_entry<'a>(config: &'a mut Map<String, Value>, name: &str) -> &'a mut Map<String, Value> {
    let value = config
        .entry(name.to_string())
        .or_insert_with(|| Value::Object(Map::new()));
    if !value.is_object() {
        *value = Value::Object(Map::new());
    }
    match value {
        Value::Object(map) => map,
        // Made an object just above.
        Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) | Value::Array(_) => {
            unreachable!("the entry was just made an object")
        }
    }
}

/// Runs `docker-credential-HELPER ACTION` with `input` on stdin; returns its stdout, or `None`
/// when it says the credentials are not found.
fn run_helper(helper: &str, action: &str, input: &[u8]) -> Result<Option<Vec<u8>>, RegistryError> {
    let failed = |what: String| RegistryError::Helper {
        helper: helper.to_string(),
        what,
    };
    let mut child = Command::new(format!("docker-credential-{helper}"))
        .arg(action)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| failed(format!("cannot run it: {error}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input)
            .map_err(|error| failed(format!("writing to it: {error}")))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|error| failed(format!("waiting for it: {error}")))?;
    if output.status.success() {
        return Ok(Some(output.stdout));
    }
    let message = String::from_utf8_lossy(&output.stdout).trim().to_string();
    // The protocol's "not found" answer (credentials.NewErrCredentialsNotFound).
    if message.contains("credentials not found") {
        return Ok(None);
    }
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    Err(failed(format!(
        "{action} failed ({}): {}",
        output.status,
        if message.is_empty() { stderr } else { message }
    )))
}

fn helper_get(helper: &str, key: &str) -> Result<Option<Credentials>, RegistryError> {
    #[derive(serde::Deserialize)]
    struct Answer {
        #[serde(rename = "Username", default)]
        username: String,
        #[serde(rename = "Secret", default)]
        secret: String,
    }
    let Some(output) = run_helper(helper, "get", key.as_bytes())? else {
        return Ok(None);
    };
    let answer: Answer =
        serde_json::from_slice(&output).map_err(|error| RegistryError::Helper {
            helper: helper.to_string(),
            what: format!("get answered with invalid JSON: {error}"),
        })?;
    if answer.secret.is_empty() {
        return Ok(None);
    }
    Ok(Some(Credentials {
        username: answer.username,
        password: answer.secret,
    }))
}

fn helper_store(helper: &str, key: &str, credentials: &Credentials) -> Result<(), RegistryError> {
    let input = serde_json::json!({
        "ServerURL": key,
        "Username": credentials.username,
        "Secret": credentials.password,
    });
    run_helper(helper, "store", input.to_string().as_bytes())?;
    Ok(())
}

fn helper_erase(helper: &str, key: &str) -> Result<bool, RegistryError> {
    Ok(run_helper(helper, "erase", key.as_bytes())?.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> (tempfile::TempDir, DockerConfig) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        fs::write(&path, text).unwrap();
        (dir, DockerConfig::at(path))
    }

    #[test]
    fn auths_entries_decode_as_docker_writes_them() {
        // base64("user:pa:ss"): a password may contain colons.
        let (_dir, config) = config(
            r#"{"auths":{"localhost:5000":{"auth":"dXNlcjpwYTpzcw=="},"https://index.docker.io/v1/":{"auth":"aHViOnNlY3JldA=="}}}"#,
        );
        let local = config.credentials("localhost:5000").unwrap().unwrap();
        assert_eq!(
            (local.username.as_str(), local.password.as_str()),
            ("user", "pa:ss")
        );
        let hub = config.credentials("docker.io").unwrap().unwrap();
        assert_eq!(hub.username, "hub");
        assert!(config.credentials("other.example").unwrap().is_none());
    }

    #[test]
    fn keys_with_a_scheme_match_their_host() {
        let (_dir, config) =
            config(r#"{"auths":{"https://registry.example:5000/v2/":{"auth":"dTpw"}}}"#);
        let found = config
            .credentials("registry.example:5000")
            .unwrap()
            .unwrap();
        assert_eq!(found.username, "u");
    }

    #[test]
    fn store_and_erase_keep_other_fields_and_use_mode_0600() {
        use std::os::unix::fs::PermissionsExt as _;
        let (_dir, config) = config(r#"{"psFormat":"table {{.ID}}"}"#);
        let credentials = Credentials {
            username: "me".to_string(),
            password: "secret".to_string(),
        };
        assert_eq!(
            config.store("localhost:5000", &credentials).unwrap(),
            Stored::File(config.path().to_path_buf())
        );
        assert_eq!(
            config.credentials("localhost:5000").unwrap(),
            Some(credentials)
        );
        let text = fs::read_to_string(config.path()).unwrap();
        assert!(text.contains("psFormat"), "{text}");
        let mode = fs::metadata(config.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(config.erase("localhost:5000").unwrap());
        assert!(!config.erase("localhost:5000").unwrap());
        assert_eq!(config.credentials("localhost:5000").unwrap(), None);
    }

    #[test]
    fn a_missing_file_has_no_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let config = DockerConfig::at(dir.path().join("absent/config.json"));
        assert_eq!(config.credentials("docker.io").unwrap(), None);
    }

    #[test]
    fn debug_output_hides_the_secret() {
        let credentials = Credentials {
            username: "me".to_string(),
            password: "hunter2".to_string(),
        };
        assert!(!format!("{credentials:?}").contains("hunter2"));
    }
}
