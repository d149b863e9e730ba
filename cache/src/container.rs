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
}

/// Docker's container states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    #[default]
    Created,
    Running,
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
    pub fn remove_container(&self, id: &str) -> Result<(), StoreError> {
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
}

/// JSON text for the database (serialising these plain structs cannot fail).
fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "{}".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

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
