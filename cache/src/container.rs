//! Container records: what `kiln run`/`create` made, its config and its state, kept in the store's
//! database next to the images they use (an image used by a container is not removed), and the
//! container's directory `containers/<id>/` (upper and work dirs of its overlay, logs, state).
//!
//! The runtime never sees these records: the CLI turns one into a sandbox spec.

use std::fs;
use std::path::PathBuf;

use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::store::{Store, StoreError};

/// How a container's process was started and what it runs: the result of combining the image
/// config with the `run` options.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    /// The executable and its arguments (`Path` + `Args` in Docker's inspect).
    pub args: Vec<String>,
    /// Docker's `Config.Entrypoint`: the image's ENTRYPOINT, or `--entrypoint`'s (empty when
    /// `--entrypoint ''` reset it; inspect shows `null`). `None` in records made before kiln
    /// kept it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// Docker's `Config.Cmd`: the arguments after the image, else the image's CMD (dropped
    /// by `--entrypoint`; empty is `null` in inspect). `None` in records made before kiln kept
    /// it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub hostname: String,
    /// `none` or `host`.
    pub network: String,
    /// The image name as the user gave it (Docker's `Config.Image`).
    pub image_name: String,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub auto_remove: bool,
    #[serde(default)]
    pub read_only: bool,
    /// Binds, volumes and tmpfs mounts (Docker's `Mounts`), resolved: volumes named and
    /// created. A volume listed here is in use.
    #[serde(default)]
    pub mounts: Vec<crate::volume::MountPoint>,
    /// `--volumes-from` values as given.
    #[serde(default)]
    pub volumes_from: Vec<String>,
    /// `--add-host` values as given.
    #[serde(default)]
    pub extra_hosts: Vec<String>,
    /// `--dns` values as given.
    #[serde(default)]
    pub dns: Vec<String>,
    /// `--dns-search` values as given.
    #[serde(default)]
    pub dns_search: Vec<String>,
    /// `--dns-option` values as given.
    #[serde(default)]
    pub dns_options: Vec<String>,
}

/// Docker's container states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    #[default]
    Created,
    Running,
    /// A detached container between two runs of its restart policy (Docker's backoff).
    Restarting,
    Exited,
}

/// The state of a container (Docker's `State` in inspect).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerState {
    pub status: Status,
    pub pid: i32,
    pub exit_code: i32,
    #[serde(rename = "OOMKilled")]
    pub oom_killed: bool,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// The process that supervises a detached container (its monitor), 0 for a foreground
    /// one (then `pid` is the `kiln run` process). While it lives the container may be running;
    /// once it is gone without recording an exit, the container is not.
    #[serde(default)]
    pub monitor_pid: i32,
    /// When the supervisor (the monitor, else the `kiln run` process) started, in clock ticks
    /// after boot (`/proc/<pid>/stat` field 22); 0 when unknown (older records). Tells the
    /// supervisor from an unrelated process that was given its pid after it died.
    #[serde(default)]
    pub supervisor_start: u64,
    /// How often the restart policy restarted the container since it was last started by
    /// hand (Docker's `RestartCount`).
    #[serde(default)]
    pub restart_count: u32,
    /// The healthcheck's verdicts while the container runs (Docker's `State.Health`); `None`
    /// for a container without a healthcheck.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
}

/// Docker's `State.Health`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Health {
    pub status: HealthStatus,
    /// Consecutive failed checks.
    pub failing_streak: u32,
    /// The last (at most 5, as Docker) checks, oldest first.
    pub log: Vec<HealthLog>,
}

/// A healthcheck verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    /// Within the start period, or no check has passed or failed `retries` times yet.
    #[default]
    Starting,
    Healthy,
    Unhealthy,
}

impl HealthStatus {
    /// Docker's word for it, as in `Up 5 seconds (healthy)`.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Starting => "starting",
            HealthStatus::Healthy => "healthy",
            HealthStatus::Unhealthy => "unhealthy",
        }
    }
}

/// One healthcheck run.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthLog {
    pub start: String,
    pub end: String,
    pub exit_code: i32,
    pub output: String,
}

/// Docker's restart policy names (`--restart`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum RestartPolicyName {
    #[default]
    #[serde(rename = "no")]
    No,
    #[serde(rename = "always")]
    Always,
    #[serde(rename = "on-failure")]
    OnFailure,
    #[serde(rename = "unless-stopped")]
    UnlessStopped,
}

/// Docker's `HostConfig.RestartPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RestartPolicy {
    pub name: RestartPolicyName,
    /// For `on-failure:N`: at most N restarts; 0 is no limit.
    pub maximum_retry_count: u32,
}

/// A `--restart` value Docker would refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestartPolicyError {
    #[error("invalid restart policy format")]
    Format,
    #[error("maximum retry count cannot be used with restart policy '{0}'")]
    CountNotAllowed(String),
    #[error("maximum retry count must be an integer")]
    Count,
    #[error("invalid restart policy '{0}'")]
    Unknown(String),
}

impl std::str::FromStr for RestartPolicy {
    type Err = RestartPolicyError;

    /// `no`, `always`, `unless-stopped`, `on-failure` or `on-failure:N` (Docker's
    /// `ParseRestartPolicy`; an empty value is `no`).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (name, count) = match text.split_once(':') {
            Some((_, count)) if count.contains(':') => return Err(RestartPolicyError::Format),
            Some((name, count)) => (name, Some(count)),
            None => (text, None),
        };
        let name = match name {
            "" | "no" => RestartPolicyName::No,
            "always" => RestartPolicyName::Always,
            "unless-stopped" => RestartPolicyName::UnlessStopped,
            "on-failure" => RestartPolicyName::OnFailure,
            other => return Err(RestartPolicyError::Unknown(other.to_string())),
        };
        let maximum_retry_count = match count {
            None => 0,
            Some(_) if name != RestartPolicyName::OnFailure => {
                return Err(RestartPolicyError::CountNotAllowed(text.to_string()));
            }
            Some(count) => count.parse().map_err(|_| RestartPolicyError::Count)?,
        };
        Ok(RestartPolicy {
            name,
            maximum_retry_count,
        })
    }
}

/// How a container's process is supervised: the `run`/`create` options that are Docker's
/// `Config.Tty`, `OpenStdin`, `StopSignal`, `StopTimeout`, `Healthcheck` and `HostConfig.Init`,
/// `RestartPolicy`. Kept beside the record in `containers/<id>/supervision.json` (see
/// [`Store::container_supervision`]); a container without the file has the defaults.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Supervision {
    /// `-t`: the container's stdio is a pseudo-terminal.
    pub tty: bool,
    /// `-i`: the container's stdin stays open for `attach`.
    pub open_stdin: bool,
    /// Docker's `StdinOnce` (`create -i`): the container's stdin is closed when the first
    /// attached client's input ends.
    pub stdin_once: bool,
    /// `--stop-signal`, else the image's `StopSignal`; `None` is SIGTERM.
    pub stop_signal: Option<String>,
    /// `--stop-timeout` in seconds; `None` is 10 (a negative value waits forever).
    pub stop_timeout: Option<i64>,
    /// `--init`: a reaping init is the container's PID 1.
    pub init: bool,
    pub restart_policy: RestartPolicy,
    /// The image's `HEALTHCHECK` merged with the `--health-*` options; `None` or a test of
    /// `["NONE"]` is no healthcheck.
    pub healthcheck: Option<crate::image::Healthcheck>,
}

/// Which stream of the container a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    Stdout,
    Stderr,
}

/// One line of a container's log, as Docker's json-file driver writes it (one JSON object per
/// line): `{"log":"text\n","stream":"stdout","time":"2024-01-02T03:04:05.123456789Z"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// The text, with its newline when the container wrote one.
    pub log: String,
    pub stream: LogStream,
    /// When the line was read, RFC 3339 with nanoseconds, UTC.
    pub time: String,
}

impl LogEntry {
    /// An entry stamped with the current time.
    pub fn now(stream: LogStream, log: String) -> Self {
        LogEntry {
            log,
            stream,
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        }
    }

    /// The entry as one line of the log file, newline included.
    pub fn to_line(&self) -> String {
        let mut line = to_json(self);
        line.push('\n');
        line
    }
}

/// A container in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRecord {
    /// 64 hex digits.
    pub id: String,
    pub name: String,
    pub image: Digest,
    pub created: String,
    pub config: ContainerConfig,
    pub state: ContainerState,
}

impl ContainerRecord {
    /// The first 12 hex digits of the ID, as Docker shows it.
    pub fn short_id(&self) -> &str {
        &self.id[..12]
    }
}

const ADJECTIVES: [&str; 24] = [
    "admiring",
    "brave",
    "busy",
    "clever",
    "dazzling",
    "eager",
    "elegant",
    "focused",
    "gallant",
    "happy",
    "jolly",
    "keen",
    "lucid",
    "modest",
    "nifty",
    "optimistic",
    "quirky",
    "relaxed",
    "serene",
    "sharp",
    "stoic",
    "tender",
    "vibrant",
    "zealous",
];
const NAMES: [&str; 24] = [
    "agnesi", "babbage", "bohr", "curie", "darwin", "dijkstra", "euler", "faraday", "gauss",
    "hopper", "hypatia", "kepler", "knuth", "lovelace", "meitner", "newton", "noether", "pascal",
    "ritchie", "shannon", "tesla", "thompson", "turing", "wozniak",
];

/// A fresh container ID: 32 random bytes as hex (from the kernel's random source).
pub fn new_id() -> Result<String, StoreError> {
    let mut bytes = [0u8; 32];
    let path = PathBuf::from("/dev/urandom");
    fs::File::open(&path)
        .and_then(|mut file| std::io::Read::read_exact(&mut file, &mut bytes))
        .map_err(|source| StoreError::Io { path, source })?;
    Ok(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
}

/// Docker's container-name rule: `[a-zA-Z0-9][a-zA-Z0-9_.-]+`.
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && name.len() >= 2
}

fn row(
    row: &rusqlite::Row<'_>,
) -> rusqlite::Result<(String, String, String, String, String, String)> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
    ))
}

/// Reads a container's json-file log incrementally: each call returns the complete lines added since the
/// previous one (a line still being written waits for the next call).
#[derive(Debug, Default)]
pub struct LogReader {
    offset: u64,
}

impl LogReader {
    /// The new complete entries of the log at `path`; unreadable lines are skipped, a missing
    /// file has none.
    pub fn read(&mut self, path: &std::path::Path) -> Vec<LogEntry> {
        use std::io::{Read, Seek};
        let Ok(mut file) = std::fs::File::open(path) else {
            return Vec::new();
        };
        let mut bytes = Vec::new();
        if file.seek(std::io::SeekFrom::Start(self.offset)).is_err()
            || file.read_to_end(&mut bytes).is_err()
        {
            return Vec::new();
        }
        let complete = bytes
            .iter()
            .rposition(|byte| *byte == b'\n')
            .map_or(0, |end| end + 1);
        self.offset += complete as u64;
        bytes[..complete]
            .split(|byte| *byte == b'\n')
            .filter_map(|line| serde_json::from_slice(line).ok())
            .collect()
    }
}

impl Store {
    /// The directory of a container: its overlay upper and work dirs, logs and runtime files.
    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.layout().containers().join(id)
    }

    /// The container's json-file log, `containers/<id>/<id>-json.log` (Docker's name), written
    /// by its monitor. Removed with the container.
    pub fn container_log_path(&self, id: &str) -> PathBuf {
        self.container_dir(id).join(format!("{id}-json.log"))
    }

    /// The container's [`Supervision`]; the defaults when it has none recorded.
    pub fn container_supervision(&self, id: &str) -> Result<Supervision, StoreError> {
        let path = self.container_dir(id).join(SUPERVISION_FILE);
        match fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|source| StoreError::ContainerRecord {
                    id: id.to_string(),
                    source,
                })
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                Ok(Supervision::default())
            }
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }

    /// Records the container's [`Supervision`]. Atomic (temp file, rename): readers see the
    /// old or the new settings.
    pub fn set_container_supervision(
        &self,
        id: &str,
        supervision: &Supervision,
    ) -> Result<(), StoreError> {
        let path = self.container_dir(id).join(SUPERVISION_FILE);
        let temp = path.with_extension(format!("{}.tmp", std::process::id()));
        fs::write(&temp, to_json(supervision))
            .and_then(|()| fs::rename(&temp, &path))
            .map_err(|source| StoreError::Io { path, source })
    }

    /// Marks container `id` as stopped by hand (`stop`, Docker's `HasBeenManuallyStopped`),
    /// so its monitor does not restart it; `false` clears the mark (`start`). Idempotent.
    pub fn set_container_stopped_by_hand(&self, id: &str, stopped: bool) -> Result<(), StoreError> {
        let path = self.container_dir(id).join(STOPPED_FILE);
        let result = if stopped {
            fs::write(&path, b"")
        } else {
            match fs::remove_file(&path) {
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
                other => other,
            }
        };
        result.map_err(|source| StoreError::Io { path, source })
    }

    /// Whether container `id` was stopped by hand since it was last started by hand.
    pub fn container_stopped_by_hand(&self, id: &str) -> bool {
        self.container_dir(id).join(STOPPED_FILE).exists()
    }

    /// Records a new container and creates its directory. `name` `None` picks a free
    /// Docker-style random name (`brave_turing`).
    pub fn create_container(
        &self,
        image: &Digest,
        name: Option<&str>,
        config: ContainerConfig,
        created: String,
    ) -> Result<ContainerRecord, StoreError> {
        let id = new_id()?;
        let name = match name {
            Some(name) => {
                let name = name.trim_start_matches('/');
                if !valid_name(name) {
                    return Err(StoreError::InvalidName(name.to_string()));
                }
                name.to_string()
            }
            None => {
                let seed = u64::from_str_radix(&id[..16], 16).unwrap_or(0);
                let base = format!(
                    "{}_{}",
                    ADJECTIVES[(seed % 24) as usize],
                    NAMES[((seed / 24) % 24) as usize]
                );
                let taken = |candidate: &str| -> Result<bool, StoreError> {
                    Ok(self
                        .db
                        .query_row(
                            "SELECT 1 FROM containers WHERE name = ?1",
                            [candidate],
                            |_| Ok(()),
                        )
                        .optional()?
                        .is_some())
                };
                let mut candidate = base.clone();
                let mut counter = 0;
                while taken(&candidate)? {
                    counter += 1;
                    candidate = format!("{base}{counter}");
                }
                candidate
            }
        };
        let dir = self.container_dir(&id);
        for sub in ["upper", "work"] {
            let path = dir.join(sub);
            fs::create_dir_all(&path).map_err(|source| StoreError::Io { path, source })?;
        }
        let record = ContainerRecord {
            id,
            name,
            image: *image,
            created,
            config,
            state: ContainerState::default(),
        };
        let inserted = self.db.execute(
            "INSERT INTO containers (id, name, image, created, config, state) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                record.id,
                record.name,
                record.image.to_string(),
                record.created,
                to_json(&record.config),
                to_json(&record.state)
            ],
        );
        match inserted {
            Ok(_) => Ok(record),
            Err(rusqlite::Error::SqliteFailure(error, _))
                if error.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                let _ = fs::remove_dir_all(&dir);
                let id = self
                    .db
                    .query_row(
                        "SELECT id FROM containers WHERE name = ?1",
                        [&record.name],
                        |row| row.get(0),
                    )
                    .optional()?
                    .unwrap_or_default();
                Err(StoreError::NameInUse {
                    name: record.name,
                    id,
                })
            }
            Err(error) => {
                let _ = fs::remove_dir_all(&dir);
                Err(error.into())
            }
        }
    }

    /// Saves a container's state.
    pub fn set_container_state(&self, id: &str, state: &ContainerState) -> Result<(), StoreError> {
        let changed = self.db.execute(
            "UPDATE containers SET state = ?2 WHERE id = ?1",
            params![id, to_json(state)],
        )?;
        if changed == 0 {
            return Err(StoreError::NoSuchContainer(id.to_string()));
        }
        Ok(())
    }

    /// Records the healthcheck verdicts of container `id` (Docker's `State.Health`) in one
    /// statement that changes nothing else of its state, and only while its state says
    /// running: a verdict that comes late never overwrites an exit, and changes other
    /// processes made to the state meanwhile are kept. Returns whether it was recorded.
    pub fn set_container_health(&self, id: &str, health: &Health) -> Result<bool, StoreError> {
        let changed = self.db.execute(
            "UPDATE containers SET state = json_set(state, '$.Health', json(?2))
             WHERE id = ?1 AND json_extract(state, '$.Status') = 'running'",
            params![id, to_json(health)],
        )?;
        Ok(changed > 0)
    }

    /// The container a user means: a full name, a full ID or an ID prefix (as Docker).
    pub fn container(&self, name_or_id: &str) -> Result<ContainerRecord, StoreError> {
        let name = name_or_id.trim_start_matches('/');
        let mut statement = self.db.prepare(
            "SELECT id, name, image, created, config, state FROM containers
             WHERE name = ?1 OR id = ?1 OR (length(?1) >= 1 AND id LIKE ?1 || '%')
             ORDER BY (name = ?1) DESC, (id = ?1) DESC LIMIT 2",
        )?;
        let rows: Vec<_> = statement
            .query_map([name], row)?
            .collect::<Result<_, _>>()?;
        match rows.as_slice() {
            [] => Err(StoreError::NoSuchContainer(name_or_id.to_string())),
            [first, ..] if first.1 == name || first.0 == name || rows.len() == 1 => {
                self.decode(first.clone())
            }
            _ => Err(StoreError::Ambiguous {
                reference: name_or_id.to_string(),
                count: rows.len(),
            }),
        }
    }

    /// Every container, newest first.
    pub fn containers(&self) -> Result<Vec<ContainerRecord>, StoreError> {
        let mut statement = self.db.prepare(
            "SELECT id, name, image, created, config, state FROM containers ORDER BY created DESC, id",
        )?;
        let rows: Vec<_> = statement.query_map([], row)?.collect::<Result<_, _>>()?;
        rows.into_iter().map(|row| self.decode(row)).collect()
    }

    fn decode(
        &self,
        (id, name, image, created, config, state): (String, String, String, String, String, String),
    ) -> Result<ContainerRecord, StoreError> {
        let record_error = |source| StoreError::ContainerRecord {
            id: id.clone(),
            source,
        };
        Ok(ContainerRecord {
            config: serde_json::from_str(&config).map_err(record_error)?,
            state: serde_json::from_str(&state).map_err(record_error)?,
            image: image.parse()?,
            id,
            name,
            created,
        })
    }

    /// Removes a container's record and directory. The caller makes sure it is not running.
    ///
    /// A container run with `--rm` takes its anonymous volumes along, as Docker's autoremove
    /// does (best effort: a volume left behind is one `volume prune` removes).
    pub fn remove_container(&self, id: &str) -> Result<(), StoreError> {
        let auto_removed = self
            .container(id)
            .ok()
            .filter(|record| record.config.auto_remove && record.id == id)
            .map(|record| record.config.mounts);
        let dir = self.container_dir(id);
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(|source| StoreError::Io {
                path: dir.clone(),
                source,
            })?;
        }
        let removed = self
            .db
            .execute("DELETE FROM containers WHERE id = ?1", [id])?;
        if removed == 0 {
            return Err(StoreError::NoSuchContainer(id.to_string()));
        }
        if let Some(mounts) = auto_removed {
            let _ = self.remove_anonymous_volumes(&mounts);
        }
        Ok(())
    }

    /// The containers that use an image.
    pub fn containers_using(&self, image: &Digest) -> Result<Vec<String>, StoreError> {
        let mut statement = self
            .db
            .prepare("SELECT id FROM containers WHERE image = ?1 ORDER BY id")?;
        let ids = statement
            .query_map([image.to_string()], |row| row.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        Ok(ids)
    }

    /// Gives container `id` the name `new_name` (a leading `/` is dropped, as Docker does).
    /// Atomic: the database's unique index decides between concurrent renames and creates,
    /// so two containers never share a name. Errors: [`StoreError::InvalidName`],
    /// [`StoreError::NameInUse`] (by another container), [`StoreError::NoSuchContainer`].
    /// Renaming to the current name succeeds without change; refusing it, as Docker does,
    /// is the caller's choice.
    pub fn rename_container(&self, id: &str, new_name: &str) -> Result<(), StoreError> {
        let name = new_name.trim_start_matches('/');
        if !valid_name(name) {
            return Err(StoreError::InvalidName(name.to_string()));
        }
        let updated = self.db.execute(
            "UPDATE containers SET name = ?2 WHERE id = ?1",
            params![id, name],
        );
        match updated {
            Ok(0) => Err(StoreError::NoSuchContainer(id.to_string())),
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(error, _))
                if error.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                let holder = self
                    .db
                    .query_row("SELECT id FROM containers WHERE name = ?1", [name], |row| {
                        row.get(0)
                    })
                    .optional()?
                    .unwrap_or_default();
                Err(StoreError::NameInUse {
                    name: name.to_string(),
                    id: holder,
                })
            }
            Err(error) => Err(error.into()),
        }
    }
}

/// The [`Supervision`] of a container, in its directory.
const SUPERVISION_FILE: &str = "supervision.json";
/// Present while a container is stopped by hand.
const STOPPED_FILE: &str = "stopped-by-hand";

/// JSON text for the database (serialising these plain structs cannot fail).
fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "{}".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_policies_parse_as_docker_parses_them() {
        let parse = |text: &str| text.parse::<RestartPolicy>();
        assert_eq!(parse("no").unwrap(), RestartPolicy::default());
        assert_eq!(parse("always").unwrap().name, RestartPolicyName::Always);
        assert_eq!(
            parse("on-failure:2").unwrap(),
            RestartPolicy {
                name: RestartPolicyName::OnFailure,
                maximum_retry_count: 2
            }
        );
        assert_eq!(
            parse("unless-stopped").unwrap().name,
            RestartPolicyName::UnlessStopped
        );
        assert_eq!(
            parse("always:3").unwrap_err().to_string(),
            "maximum retry count cannot be used with restart policy 'always:3'"
        );
        assert!(parse("on-failure:x").is_err());
        assert!(parse("sometimes").is_err());
    }

    #[test]
    fn health_is_recorded_only_while_running_and_keeps_the_rest_of_the_state() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let image: Digest = format!("sha256:{}", "ab".repeat(32)).parse().unwrap();
        // A container of an image that is not stored: only the state matters here.
        store.db.execute_batch("PRAGMA foreign_keys = OFF").unwrap();
        let record = store
            .create_container(&image, None, ContainerConfig::default(), "now".into())
            .unwrap();
        let health = Health {
            status: HealthStatus::Healthy,
            failing_streak: 0,
            log: vec![HealthLog {
                exit_code: 0,
                output: "ok\n".into(),
                ..HealthLog::default()
            }],
        };
        // Not running yet: nothing is recorded.
        assert!(!store.set_container_health(&record.id, &health).unwrap());
        let running = ContainerState {
            status: Status::Running,
            pid: 42,
            restart_count: 2,
            ..ContainerState::default()
        };
        store.set_container_state(&record.id, &running).unwrap();
        assert!(store.set_container_health(&record.id, &health).unwrap());
        let state = store.container(&record.id).unwrap().state;
        assert_eq!(
            state,
            ContainerState {
                health: Some(health.clone()),
                ..running.clone()
            }
        );
        // Once exited, a late verdict does not overwrite the exit.
        let exited = ContainerState {
            status: Status::Exited,
            exit_code: 3,
            ..running
        };
        store.set_container_state(&record.id, &exited).unwrap();
        assert!(!store.set_container_health(&record.id, &health).unwrap());
        assert_eq!(store.container(&record.id).unwrap().state, exited);
    }

    #[test]
    fn log_entries_are_docker_json_file_lines() {
        let entry = LogEntry::now(LogStream::Stderr, "oops\n".into());
        let line = entry.to_line();
        assert!(
            line.ends_with("}\n") && line.matches('\n').count() == 1,
            "{line:?}"
        );
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["log"], "oops\n");
        assert_eq!(value["stream"], "stderr");
        // RFC 3339 with nanoseconds in UTC, as Docker's RFC3339Nano.
        let time = value["time"].as_str().unwrap();
        assert!(time.ends_with('Z') && time.len() == "2024-01-02T03:04:05.123456789Z".len());
    }

    #[test]
    fn the_log_reader_returns_only_new_complete_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut reader = LogReader::default();
        assert!(reader.read(&path).is_empty());
        let first = LogEntry::now(LogStream::Stdout, "one\n".into()).to_line();
        let second = LogEntry::now(LogStream::Stdout, "two\n".into()).to_line();
        let (head, rest) = second.split_at(10);
        fs::write(&path, format!("{first}{head}")).unwrap();
        let read = reader.read(&path);
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].log, "one\n");
        fs::write(&path, format!("{first}{head}{rest}")).unwrap();
        let read = reader.read(&path);
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].log, "two\n");
        assert!(reader.read(&path).is_empty());
    }
}
