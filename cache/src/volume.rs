//! Volumes and container mounts: the store's named and anonymous volumes (`volumes/<name>/`,
//! Docker's `local` driver) and the container's mount points (Docker's `Mounts`), parsed from
//! `-v`, `--mount`, `--tmpfs`, `--volumes-from` and the image's `VOLUME`s.
//!
//! A volume is a directory `volumes/<name>/_data` plus its metadata `volumes/<name>/volume.json`
//! (name, creation time, labels, options). Creation is atomic: the whole directory is built
//! under a temporary name in `volumes/` and renamed into place, so a volume either exists
//! complete or not at all, and two processes creating the same name both succeed with one
//! volume. A volume is in use while a container record lists it in its mounts; the in-use
//! check and the removal happen under the exclusive volume lock ([`Store::volume_lock`]),
//! which `run` holds shared from creating its volumes until its record is written.
//!
//! Does not mount anything: the runtime bind-mounts `_data` and does the copy-up.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::store::{Store, StoreError};

/// The label Docker (23+) puts on volumes created for a container without a name.
pub const ANONYMOUS_LABEL: &str = "com.docker.volume.anonymous";

/// The only volume driver kiln has.
pub const LOCAL_DRIVER: &str = "local";

/// The metadata file in a volume's directory.
const METADATA_FILE: &str = "volume.json";

/// A volume problem, in Docker's words where Docker has them.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error(
        "create {0}: \"{0}\" includes invalid characters for a local volume name, only \"[a-zA-Z0-9][a-zA-Z0-9_.-]\" are allowed. If you intended to pass a host directory, use absolute path"
    )]
    InvalidName(String),
    #[error("no such volume: {0}")]
    NoSuchVolume(String),
    #[error("remove {name}: volume is in use - [{}]", containers.join(", "))]
    InUse {
        name: String,
        containers: Vec<String>,
    },
    #[error("error looking up volume plugin {0}: plugin \"{0}\" not found")]
    UnknownDriver(String),
    #[error(
        "volume option {0:?} is not supported: kiln's local driver keeps volumes as plain directories"
    )]
    UnsupportedOption(String),
    #[error("volume {name} has unreadable metadata")]
    Metadata {
        name: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("volume store at {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Mount(#[from] MountSpecError),
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> VolumeError + '_ {
    move |source| VolumeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A bad `-v`, `--mount`, `--tmpfs` or `--volumes-from` value, worded as Docker words it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MountSpecError {
    #[error("invalid volume specification: '{0}'")]
    VolumeSpec(String),
    #[error(
        "invalid volume specification: '{spec}': invalid mount config for type \"{kind}\": {problem}"
    )]
    VolumeConfig {
        spec: String,
        kind: MountKind,
        problem: ConfigProblem,
    },
    #[error("invalid mode: {0}")]
    Mode(String),
    #[error("invalid argument \"{spec}\" for \"--mount\" flag: {problem}")]
    MountFlag {
        spec: String,
        problem: MountFlagProblem,
    },
    #[error("invalid mount config for type \"{kind}\": {problem}")]
    Config {
        kind: String,
        problem: ConfigProblem,
    },
    #[error("Duplicate mount point: {0}")]
    Duplicate(String),
    #[error("{what} is not supported by kiln")]
    Unsupported { what: String },
}

/// What is wrong with a `--mount` value (Docker's CLI messages).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MountFlagProblem {
    #[error("target is required")]
    TargetRequired,
    #[error("invalid field '{0}' must be a key=value pair")]
    NotKeyValue(String),
    #[error("invalid value for {key}: {value}")]
    BadValue { key: String, value: String },
    #[error("unexpected key '{key}' in '{field}'")]
    UnexpectedKey { key: String, field: String },
    #[error("cannot mix '{options}-*' options with mount type '{kind}'")]
    Mix { options: &'static str, kind: String },
}

/// What is wrong with a mount's configuration (Docker's daemon messages).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigProblem {
    #[error("mount type unknown")]
    UnknownType,
    #[error("field Source must not be empty")]
    SourceEmpty,
    #[error("field Source must not be specified")]
    SourceSpecified,
    #[error("invalid mount path: '{0}' mount path must be absolute")]
    RelativePath(String),
    #[error("bind source path does not exist: {0}")]
    MissingSource(String),
    #[error("invalid specification: destination can't be '/'")]
    RootDestination,
}

/// A volume's metadata (Docker's `volume inspect` object, without the mount point, which
/// follows from the store's location).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Volume {
    pub name: String,
    /// RFC 3339, seconds, UTC.
    pub created_at: String,
    pub driver: String,
    pub labels: BTreeMap<String, String>,
    /// Driver options; `None` for volumes created implicitly by `run` (Docker shows `null`).
    pub options: Option<BTreeMap<String, String>>,
}

impl Volume {
    /// Created for a container without a name; `rm -v`, `run --rm` and `volume prune`
    /// (without `-a`) remove it.
    pub fn is_anonymous(&self) -> bool {
        self.labels.contains_key(ANONYMOUS_LABEL)
    }
}

/// Docker's mount types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MountKind {
    Bind,
    Volume,
    Tmpfs,
}

impl std::fmt::Display for MountKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MountKind::Bind => "bind",
            MountKind::Volume => "volume",
            MountKind::Tmpfs => "tmpfs",
        })
    }
}

/// Which flag asked for a mount: inspect shows `-v` in `HostConfig.Binds`, `--mount` in
/// `HostConfig.Mounts`, `--tmpfs` in `HostConfig.Tmpfs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MountOrigin {
    /// `-v`.
    Volume,
    /// `--mount`.
    Mount,
    /// `--tmpfs`.
    Tmpfs,
    /// The image's `VOLUME`.
    Image,
    /// `--volumes-from`.
    VolumesFrom,
}

/// One mount of a container, as its record keeps it (Docker's `MountPoint`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct MountPoint {
    #[serde(rename = "Type")]
    pub kind: MountKind,
    /// The volume's name; empty for binds, tmpfs, and volumes not created yet (anonymous).
    #[serde(default)]
    pub name: String,
    /// The host path: the bind source, the volume's `_data`; empty for tmpfs.
    #[serde(default)]
    pub source: String,
    /// Absolute path inside the container.
    pub destination: String,
    /// The mode as given (`ro`, `rw,nocopy`), Docker's `Mode`.
    #[serde(default)]
    pub mode: String,
    #[serde(rename = "RW")]
    pub rw: bool,
    /// The volume was created for this container without a name.
    #[serde(default)]
    pub anonymous: bool,
    /// Fill an empty volume from the image before mounting (not with `nocopy`).
    #[serde(default)]
    pub copy_up: bool,
    /// tmpfs options in `--tmpfs` syntax (`size=64m,mode=1770`).
    #[serde(default)]
    pub tmpfs_options: String,
    /// `--mount ...,tmpfs-size=`, in bytes.
    #[serde(default)]
    pub tmpfs_size: Option<u64>,
    /// `--mount ...,tmpfs-mode=`.
    #[serde(default)]
    pub tmpfs_mode: Option<u32>,
    /// Labels for a volume `--mount` creates (`volume-label=`).
    #[serde(default)]
    pub volume_labels: BTreeMap<String, String>,
    pub origin: MountOrigin,
    /// The flag's value as given (for `HostConfig.Binds` and `HostConfig.Tmpfs`).
    #[serde(default)]
    pub spec: String,
}

impl MountPoint {
    fn new(kind: MountKind, destination: &str, origin: MountOrigin, spec: &str) -> Self {
        MountPoint {
            kind,
            name: String::new(),
            source: String::new(),
            destination: destination.to_string(),
            mode: String::new(),
            rw: true,
            anonymous: false,
            copy_up: kind == MountKind::Volume,
            tmpfs_options: String::new(),
            tmpfs_size: None,
            tmpfs_mode: None,
            volume_labels: BTreeMap::new(),
            origin,
            spec: spec.to_string(),
        }
    }

    /// Docker's `Propagation`: `rprivate` for binds, empty otherwise.
    pub fn propagation(&self) -> &'static str {
        match self.kind {
            MountKind::Bind => "rprivate",
            MountKind::Volume | MountKind::Tmpfs => "",
        }
    }
}

/// Docker's volume-name rule for the local driver: `[a-zA-Z0-9][a-zA-Z0-9_.-]+`.
pub fn valid_volume_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    name.len() >= 2
        && bytes
            .next()
            .is_some_and(|byte| byte.is_ascii_alphanumeric())
        && bytes.all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'.' | b'-'))
}

/// Go's `path.Clean` for an absolute container path, enough to compare destinations.
fn clean(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            part => parts.push(part),
        }
    }
    format!("/{}", parts.join("/"))
}

fn check_destination(destination: &str) -> Result<String, ConfigProblem> {
    if !destination.starts_with('/') {
        return Err(ConfigProblem::RelativePath(destination.to_string()));
    }
    let cleaned = clean(destination);
    if cleaned == "/" {
        return Err(ConfigProblem::RootDestination);
    }
    Ok(cleaned)
}

/// The words a `-v` mode may hold (moby `linuxParser.ValidateMountMode`): at most one each of
/// `rw`/`ro`, `z`/`Z`, `nocopy`, and a propagation mode. Returns (read-only, copy).
fn parse_mode(mode: &str) -> Result<(bool, bool), MountSpecError> {
    let invalid = || MountSpecError::Mode(mode.to_string());
    let (mut access, mut label, mut copy, mut propagation) = (None, false, None, false);
    if mode.is_empty() {
        return Ok((false, true));
    }
    for word in mode.split(',') {
        match word {
            "rw" | "ro" if access.is_none() => access = Some(word == "ro"),
            "z" | "Z" if !label => label = true,
            "nocopy" if copy.is_none() => copy = Some(false),
            "private" | "rprivate" if !propagation => propagation = true,
            "shared" | "rshared" | "slave" | "rslave" => {
                return Err(MountSpecError::Unsupported {
                    what: format!("mount propagation {word:?}"),
                });
            }
            _ => return Err(invalid()),
        }
    }
    Ok((access.unwrap_or(false), copy.unwrap_or(true)))
}

/// Parses `-v`: `/ctr` (anonymous volume), `NAME:/ctr[:MODE]` (named volume, created if
/// missing), `/host:/ctr[:MODE]` (bind mount). A source that is not an absolute path is a
/// volume name, as in Docker.
pub fn parse_volume_flag(spec: &str) -> Result<MountPoint, MountSpecError> {
    let parts: Vec<&str> = spec.split(':').collect();
    if parts.iter().any(|part| part.is_empty()) {
        return Err(MountSpecError::VolumeSpec(spec.to_string()));
    }
    let (source, destination, mode) = match parts.as_slice() {
        [destination] => ("", *destination, ""),
        [_, second] if parse_mode(second).is_ok() && !second.starts_with('/') => {
            // `/foo:ro`: a destination and a mode is not a volume.
            return Err(MountSpecError::VolumeSpec(spec.to_string()));
        }
        [source, destination] => (*source, *destination, ""),
        [source, destination, mode] => (*source, *destination, *mode),
        _ => return Err(MountSpecError::VolumeSpec(spec.to_string())),
    };
    let (read_only, copy) = parse_mode(mode)?;
    let kind = if source.starts_with('/') {
        MountKind::Bind
    } else {
        MountKind::Volume
    };
    let destination =
        check_destination(destination).map_err(|problem| MountSpecError::VolumeConfig {
            spec: spec.to_string(),
            kind,
            problem,
        })?;
    let mut mount = MountPoint::new(kind, &destination, MountOrigin::Volume, spec);
    mount.mode = mode.to_string();
    mount.rw = !read_only;
    match kind {
        MountKind::Bind => mount.source = clean(source),
        MountKind::Volume | MountKind::Tmpfs => {
            mount.name = source.to_string();
            mount.anonymous = source.is_empty();
            mount.copy_up = copy;
        }
    }
    Ok(mount)
}

/// Go's `strconv.ParseBool`.
fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Splits a `--mount` value as Go's `encoding/csv` reads one record: commas separate fields,
/// a field in double quotes may hold commas, `""` inside quotes is one quote.
fn csv_fields(text: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(std::mem::take(&mut field)),
            c => field.push(c),
        }
    }
    fields.push(field);
    fields
}

/// Parses `--mount` (Docker's CSV syntax): `type=bind|volume|tmpfs` (default `volume`),
/// `source`/`src`, `target`/`dst`/`destination`, `readonly`/`ro[=BOOL]`,
/// `volume-nocopy[=BOOL]`, `volume-label=K=V`, `volume-driver=local`, `tmpfs-size=` (Docker's
/// sizes: `64m`), `tmpfs-mode=` (octal), `bind-propagation=rprivate|private`, `consistency`
/// (ignored on Linux, as in Docker). Other options Docker has (`volume-opt`, `volume-subpath`,
/// `bind-nonrecursive`, shared propagation) are refused.
pub fn parse_mount_flag(spec: &str) -> Result<MountPoint, MountSpecError> {
    let flag_error = |problem| MountSpecError::MountFlag {
        spec: spec.to_string(),
        problem,
    };
    let bad_value = |key: &str, value: &str| {
        flag_error(MountFlagProblem::BadValue {
            key: key.to_string(),
            value: value.to_string(),
        })
    };
    let (mut kind, mut source, mut target) = ("volume".to_string(), String::new(), String::new());
    let mut read_only = false;
    let mut no_copy = None;
    let mut labels = BTreeMap::new();
    let (mut volume_options, mut bind_options) = (false, false);
    let (mut tmpfs_size, mut tmpfs_mode) = (None, None);
    for field in csv_fields(spec) {
        let (key, value) = match field.split_once('=') {
            Some((key, value)) => (key.to_ascii_lowercase(), Some(value.to_string())),
            None => (field.to_ascii_lowercase(), None),
        };
        let Some(value) = value else {
            match key.as_str() {
                "readonly" | "ro" => read_only = true,
                "volume-nocopy" => {
                    no_copy = Some(true);
                    volume_options = true;
                }
                _ => return Err(flag_error(MountFlagProblem::NotKeyValue(field.clone()))),
            }
            continue;
        };
        match key.as_str() {
            "type" => kind = value.to_ascii_lowercase(),
            "source" | "src" => source = value,
            "target" | "dst" | "destination" => target = value,
            "readonly" | "ro" => {
                read_only = parse_bool(&value).ok_or_else(|| bad_value(&key, &value))?;
            }
            "consistency" => {}
            "volume-nocopy" => {
                no_copy = Some(parse_bool(&value).ok_or_else(|| bad_value(&key, &value))?);
                volume_options = true;
            }
            "volume-label" => {
                let (label, text) = value.split_once('=').unwrap_or((&value, ""));
                labels.insert(label.to_string(), text.to_string());
                volume_options = true;
            }
            "volume-driver" if value == LOCAL_DRIVER => volume_options = true,
            "bind-propagation" if matches!(value.as_str(), "private" | "rprivate") => {
                bind_options = true;
            }
            "volume-driver" | "volume-opt" | "volume-subpath" | "bind-propagation"
            | "bind-nonrecursive" | "bind-recursive" => {
                return Err(MountSpecError::Unsupported {
                    what: format!("--mount {key}={value}"),
                });
            }
            "tmpfs-size" => {
                tmpfs_size = Some(
                    crate::units::ram_in_bytes(&value).ok_or_else(|| bad_value(&key, &value))?,
                );
            }
            "tmpfs-mode" => {
                tmpfs_mode = Some(
                    u32::from_str_radix(&value, 8)
                        .ok()
                        .filter(|mode| *mode <= 0o7777)
                        .ok_or_else(|| bad_value(&key, &value))?,
                );
            }
            _ => {
                return Err(flag_error(MountFlagProblem::UnexpectedKey {
                    key,
                    field: field.clone(),
                }));
            }
        }
    }
    if target.is_empty() {
        return Err(flag_error(MountFlagProblem::TargetRequired));
    }
    let mix = |options| {
        flag_error(MountFlagProblem::Mix {
            options,
            kind: kind.clone(),
        })
    };
    if volume_options && kind != "volume" {
        return Err(mix("volume"));
    }
    if bind_options && kind != "bind" {
        return Err(mix("bind"));
    }
    if (tmpfs_size.is_some() || tmpfs_mode.is_some()) && kind != "tmpfs" {
        return Err(mix("tmpfs"));
    }
    let config = |problem| MountSpecError::Config {
        kind: kind.clone(),
        problem,
    };
    let kind_of = match kind.as_str() {
        "bind" => MountKind::Bind,
        "volume" => MountKind::Volume,
        "tmpfs" => MountKind::Tmpfs,
        _ => return Err(config(ConfigProblem::UnknownType)),
    };
    let destination = check_destination(&target).map_err(config)?;
    let mut mount = MountPoint::new(kind_of, &destination, MountOrigin::Mount, spec);
    mount.rw = !read_only;
    match kind_of {
        MountKind::Bind => {
            if source.is_empty() {
                return Err(config(ConfigProblem::SourceEmpty));
            }
            if !source.starts_with('/') {
                return Err(config(ConfigProblem::RelativePath(source)));
            }
            if !Path::new(&source).exists() {
                return Err(config(ConfigProblem::MissingSource(source)));
            }
            mount.source = clean(&source);
        }
        MountKind::Volume => {
            mount.mode = "z".to_string();
            mount.anonymous = source.is_empty();
            mount.name = source;
            mount.copy_up = no_copy != Some(true);
            mount.volume_labels = labels;
        }
        MountKind::Tmpfs => {
            if !source.is_empty() {
                return Err(config(ConfigProblem::SourceSpecified));
            }
            // moby `ConvertTmpfsOptions`: ro, mode in octal, size with the largest exact unit.
            let mut options = Vec::new();
            if read_only {
                options.push("ro".to_string());
            }
            if let Some(mode) = tmpfs_mode {
                options.push(format!("mode={mode:o}"));
            }
            if let Some(size) = tmpfs_size.filter(|size| *size > 0) {
                let unit = [("g", 1u64 << 30), ("m", 1 << 20), ("k", 1 << 10)]
                    .into_iter()
                    .find(|(_, divisor)| size % divisor == 0);
                options.push(match unit {
                    Some((suffix, divisor)) => format!("size={}{suffix}", size / divisor),
                    None => format!("size={size}"),
                });
            }
            mount.tmpfs_options = options.join(",");
            mount.tmpfs_size = tmpfs_size;
            mount.tmpfs_mode = tmpfs_mode;
        }
    }
    Ok(mount)
}

/// Parses `--tmpfs /path[:options]`. The options are kept as given; the runtime validates
/// them (`kiln_runtime::TmpfsMount::parse`).
pub fn parse_tmpfs_flag(spec: &str) -> Result<MountPoint, MountSpecError> {
    let (destination, options) = spec.split_once(':').unwrap_or((spec, ""));
    let destination = check_destination(destination).map_err(|problem| MountSpecError::Config {
        kind: "tmpfs".to_string(),
        problem,
    })?;
    let mut mount = MountPoint::new(MountKind::Tmpfs, &destination, MountOrigin::Tmpfs, spec);
    mount.tmpfs_options = options.to_string();
    mount.rw = !options.split(',').any(|option| option == "ro");
    Ok(mount)
}

/// Parses `--volumes-from CONTAINER[:ro|rw]`: the container and the access mode forced on its
/// mounts (`None` keeps each mount's own).
pub fn parse_volumes_from(spec: &str) -> Result<(&str, Option<bool>), MountSpecError> {
    match spec.split_once(':') {
        None => Ok((spec, None)),
        Some((container, "ro")) => Ok((container, Some(true))),
        Some((container, "rw")) => Ok((container, Some(false))),
        Some((_, mode)) => Err(MountSpecError::Mode(mode.to_string())),
    }
}

/// The mounts another container's volumes give (`--volumes-from`): its binds and volumes at
/// the same destinations (tmpfs mounts are not shared, as in Docker), read-only when
/// `read_only` says so.
pub fn volumes_from(mounts: &[MountPoint], read_only: Option<bool>) -> Vec<MountPoint> {
    mounts
        .iter()
        .filter(|mount| mount.kind != MountKind::Tmpfs)
        .map(|mount| {
            let mut shared = mount.clone();
            if let Some(read_only) = read_only {
                shared.rw = !read_only;
            }
            // The volume is filled already, or deliberately empty.
            shared.copy_up = false;
            shared.origin = MountOrigin::VolumesFrom;
            shared
        })
        .collect()
}

/// A held volume lock; released when dropped.
#[derive(Debug)]
pub struct VolumeLock {
    _lock: Flock<fs::File>,
}

impl Store {
    /// A volume's directory, `volumes/<name>/`.
    pub fn volume_dir(&self, name: &str) -> PathBuf {
        self.layout().volumes().join(name)
    }

    /// A volume's content, `volumes/<name>/_data`: the directory bind-mounted into containers
    /// (Docker's `Mountpoint`).
    pub fn volume_data(&self, name: &str) -> PathBuf {
        self.volume_dir(name).join("_data")
    }

    /// Takes the volume lock: shared while creating volumes and recording the containers that
    /// use them (`run`), exclusive while checking that volumes are unused and removing them.
    /// Blocks until granted.
    pub fn volume_lock(&self, exclusive: bool) -> Result<VolumeLock, VolumeError> {
        let path = self.layout().volumes().join(".lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_at(&path))?;
        let mode = if exclusive {
            FlockArg::LockExclusive
        } else {
            FlockArg::LockShared
        };
        let lock =
            Flock::lock(file, mode).map_err(|(_, errno)| io_at(&path)(io::Error::from(errno)))?;
        Ok(VolumeLock { _lock: lock })
    }

    /// Creates volume `name` (a random 64-hex name when `None`: an anonymous volume, labelled
    /// [`ANONYMOUS_LABEL`]) and returns it. Idempotent: an existing volume of that name is
    /// returned unchanged, as Docker does. Atomic (built aside, then renamed into place).
    /// `options` `None` marks a volume made implicitly by `run`.
    pub fn create_volume(
        &self,
        name: Option<&str>,
        mut labels: BTreeMap<String, String>,
        options: Option<BTreeMap<String, String>>,
    ) -> Result<Volume, VolumeError> {
        let name = match name {
            Some(name) if !valid_volume_name(name) => {
                return Err(VolumeError::InvalidName(name.to_string()));
            }
            Some(name) => name.to_string(),
            None => {
                labels.insert(ANONYMOUS_LABEL.to_string(), String::new());
                crate::container::new_id()?
            }
        };
        if let Some((key, _)) = options.iter().flatten().next() {
            return Err(VolumeError::UnsupportedOption(key.clone()));
        }
        match self.volume(&name) {
            Ok(volume) => return Ok(volume),
            Err(VolumeError::NoSuchVolume(_)) => {}
            Err(error) => return Err(error),
        }
        let volume = Volume {
            name: name.clone(),
            created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            driver: LOCAL_DRIVER.to_string(),
            labels,
            options,
        };
        let volumes = self.layout().volumes();
        // A dot name is never a volume name, so listings skip it; prune removes leftovers.
        let staging = tempfile::Builder::new()
            .prefix(".creating-")
            .tempdir_in(&volumes)
            .map_err(io_at(&volumes))?;
        let data = staging.path().join("_data");
        fs::create_dir(&data).map_err(io_at(&data))?;
        let metadata = staging.path().join(METADATA_FILE);
        let bytes = serde_json::to_vec_pretty(&volume).map_err(|source| VolumeError::Metadata {
            name: name.clone(),
            source,
        })?;
        fs::write(&metadata, bytes).map_err(io_at(&metadata))?;
        let target = self.volume_dir(&name);
        let staged = staging.keep();
        if let Err(error) = fs::rename(&staged, &target) {
            let _ = fs::remove_dir_all(&staged);
            // Another process created it first: theirs is the volume.
            return match self.volume(&name) {
                Ok(existing) => Ok(existing),
                Err(_) => Err(io_at(&target)(error)),
            };
        }
        Ok(volume)
    }

    /// The volume called `name`.
    pub fn volume(&self, name: &str) -> Result<Volume, VolumeError> {
        if !valid_volume_name(name) {
            return Err(VolumeError::NoSuchVolume(name.to_string()));
        }
        let path = self.volume_dir(name).join(METADATA_FILE);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                return Err(VolumeError::NoSuchVolume(name.to_string()));
            }
            Err(error) => return Err(io_at(&path)(error)),
        };
        serde_json::from_slice(&bytes).map_err(|source| VolumeError::Metadata {
            name: name.to_string(),
            source,
        })
    }

    /// Every volume, sorted by name.
    pub fn volumes(&self) -> Result<Vec<Volume>, VolumeError> {
        let dir = self.layout().volumes();
        let mut names: Vec<String> = fs::read_dir(&dir)
            .map_err(io_at(&dir))?
            .filter_map(Result::ok)
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|name| valid_volume_name(name))
            .collect();
        names.sort();
        let mut volumes = Vec::with_capacity(names.len());
        for name in names {
            match self.volume(&name) {
                Ok(volume) => volumes.push(volume),
                // Removed meanwhile, or a stray directory that is not a volume.
                Err(VolumeError::NoSuchVolume(_)) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(volumes)
    }

    /// The ids of the containers whose mounts use volume `name`, sorted.
    pub fn volume_users(&self, name: &str) -> Result<Vec<String>, VolumeError> {
        Ok(self
            .containers()?
            .into_iter()
            .filter(|record| {
                record
                    .config
                    .mounts
                    .iter()
                    .any(|mount| mount.kind == MountKind::Volume && mount.name == name)
            })
            .map(|record| record.id)
            .collect())
    }

    /// Removes volume `name` and its content unless a container uses it
    /// ([`VolumeError::InUse`], Docker's message). Takes the exclusive volume lock.
    pub fn remove_volume(&self, name: &str) -> Result<(), VolumeError> {
        let _lock = self.volume_lock(true)?;
        self.remove_unused_volume(name)
    }

    fn remove_unused_volume(&self, name: &str) -> Result<(), VolumeError> {
        self.volume(name)?;
        let users = self.volume_users(name)?;
        if !users.is_empty() {
            return Err(VolumeError::InUse {
                name: name.to_string(),
                containers: users,
            });
        }
        // Renamed aside first: the name is free at once, and a crash mid-delete leaves a
        // dot directory (not a volume) that prune clears.
        let dir = self.volume_dir(name);
        let doomed = self
            .layout()
            .volumes()
            .join(format!(".removing-{name}-{}", std::process::id()));
        fs::rename(&dir, &doomed).map_err(io_at(&dir))?;
        fs::remove_dir_all(&doomed).map_err(io_at(&doomed))
    }

    /// Docker's `volume prune`: removes the volumes no container uses, only anonymous ones
    /// unless `all` (Docker 23+), and leftovers of interrupted creations and removals. Returns
    /// the removed names and the bytes freed.
    pub fn prune_volumes(&self, all: bool) -> Result<(Vec<String>, u64), VolumeError> {
        let _lock = self.volume_lock(true)?;
        let mut removed = Vec::new();
        let mut freed = 0;
        for volume in self.volumes()? {
            if !(all || volume.is_anonymous()) || !self.volume_users(&volume.name)?.is_empty() {
                continue;
            }
            let size = crate::store::directory_size(&self.volume_data(&volume.name));
            self.remove_unused_volume(&volume.name)?;
            freed += size;
            removed.push(volume.name);
        }
        let dir = self.layout().volumes();
        for entry in fs::read_dir(&dir)
            .map_err(io_at(&dir))?
            .filter_map(Result::ok)
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(".creating-") || name.starts_with(".removing-") {
                // A creation in progress holds no lock: only clear ones older than a minute.
                let old = entry
                    .metadata()
                    .and_then(|metadata| metadata.modified())
                    .ok()
                    .and_then(|modified| modified.elapsed().ok())
                    .is_some_and(|age| age.as_secs() > 60);
                if old || name.starts_with(".removing-") {
                    let _ = fs::remove_dir_all(entry.path());
                }
            }
        }
        Ok((removed, freed))
    }

    /// Removes the anonymous volumes among `mounts` that no container uses any more (Docker's
    /// `rm -v` and `--rm`; a volume still used through `--volumes-from` stays, silently, as
    /// in Docker). Named volumes always stay. Call after the container's record is gone.
    pub fn remove_anonymous_volumes(&self, mounts: &[MountPoint]) -> Result<(), VolumeError> {
        let _lock = self.volume_lock(true)?;
        for mount in mounts {
            if mount.kind != MountKind::Volume || !mount.anonymous {
                continue;
            }
            match self.remove_unused_volume(&mount.name) {
                Ok(()) | Err(VolumeError::InUse { .. } | VolumeError::NoSuchVolume(_)) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    /// Turns the mounts a container asked for into the mounts it gets, by Docker's rules:
    /// `--volumes-from` mounts first, overridden at the same destination by `-v`, `--mount`
    /// and `--tmpfs` (which must not repeat a destination: [`MountSpecError::Duplicate`]);
    /// then an anonymous volume for each image `VOLUME` not mounted otherwise. Creates the
    /// volumes that do not exist (named or anonymous), fills in each volume's name and
    /// `_data` path, and creates missing `-v` bind sources as Docker does. Hold
    /// [`Store::volume_lock`] (shared) until the container record is written.
    pub fn resolve_mounts(
        &self,
        explicit: Vec<MountPoint>,
        from: Vec<MountPoint>,
        image_volumes: &[String],
    ) -> Result<Vec<MountPoint>, VolumeError> {
        let mut seen = std::collections::BTreeSet::new();
        for mount in &explicit {
            if !seen.insert(clean(&mount.destination)) {
                return Err(MountSpecError::Duplicate(mount.destination.clone()).into());
            }
        }
        let mut mounts: Vec<MountPoint> = from
            .into_iter()
            .filter(|mount| !seen.contains(&clean(&mount.destination)))
            .collect();
        mounts.extend(explicit);
        for path in image_volumes {
            let destination = clean(path);
            if destination == "/"
                || mounts
                    .iter()
                    .any(|mount| clean(&mount.destination) == destination)
            {
                continue;
            }
            let mut mount =
                MountPoint::new(MountKind::Volume, &destination, MountOrigin::Image, "");
            mount.anonymous = true;
            mounts.push(mount);
        }
        for mount in &mut mounts {
            match mount.kind {
                MountKind::Volume => {
                    let name = (!mount.name.is_empty()).then_some(mount.name.as_str());
                    let volume = if mount.origin == MountOrigin::VolumesFrom {
                        self.volume(&mount.name)?
                    } else {
                        self.create_volume(name, mount.volume_labels.clone(), None)?
                    };
                    mount.source = self.volume_data(&volume.name).display().to_string();
                    mount.name = volume.name;
                }
                MountKind::Bind if mount.origin == MountOrigin::Volume => {
                    let source = Path::new(&mount.source);
                    if !source.exists() {
                        fs::create_dir_all(source).map_err(io_at(source))?;
                    }
                }
                MountKind::Bind | MountKind::Tmpfs => {}
            }
        }
        Ok(mounts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_flags_tell_names_from_paths() {
        let named = parse_volume_flag("data:/srv/data:ro").unwrap();
        assert_eq!(
            (named.kind, named.name.as_str(), named.rw, named.copy_up),
            (MountKind::Volume, "data", false, true)
        );
        let bind = parse_volume_flag("/host/dir:/dir").unwrap();
        assert_eq!(
            (bind.kind, bind.source.as_str()),
            (MountKind::Bind, "/host/dir")
        );
        let anonymous = parse_volume_flag("/cache").unwrap();
        assert!(anonymous.anonymous && anonymous.kind == MountKind::Volume);
        assert!(!parse_volume_flag("data:/d:nocopy").unwrap().copy_up);
        let error = |spec: &str| parse_volume_flag(spec).unwrap_err().to_string();
        assert_eq!(error("a:b:c:d"), "invalid volume specification: 'a:b:c:d'");
        assert_eq!(error("/foo:ro"), "invalid volume specification: '/foo:ro'");
        assert_eq!(error("data:/d:xyz"), "invalid mode: xyz");
        assert_eq!(
            error("data:rel"),
            "invalid volume specification: 'data:rel': invalid mount config for type \"volume\": invalid mount path: 'rel' mount path must be absolute"
        );
        assert!(error("data:/").contains("destination can't be '/'"));
    }

    #[test]
    fn mount_flags_follow_dockers_csv_syntax_and_errors() {
        let volume = parse_mount_flag("source=data,target=/d,readonly,volume-nocopy").unwrap();
        assert_eq!(
            (volume.kind, volume.name.as_str(), volume.rw, volume.copy_up),
            (MountKind::Volume, "data", false, false)
        );
        let tmpfs = parse_mount_flag("type=tmpfs,dst=/t,tmpfs-size=1m,tmpfs-mode=1770").unwrap();
        assert_eq!(tmpfs.tmpfs_options, "mode=1770,size=1m");
        assert_eq!(tmpfs.tmpfs_size, Some(1 << 20));
        let error = |spec: &str| parse_mount_flag(spec).unwrap_err().to_string();
        assert_eq!(
            error("type=volume"),
            "invalid argument \"type=volume\" for \"--mount\" flag: target is required"
        );
        assert!(error("target=/x,readonly=maybe").ends_with("invalid value for readonly: maybe"));
        assert!(
            error("type=volume,target=/x,bogus=1").ends_with("unexpected key 'bogus' in 'bogus=1'")
        );
        assert!(
            error("type=bind,src=/a,dst=/b,volume-nocopy")
                .ends_with("cannot mix 'volume-*' options with mount type 'bind'")
        );
        assert!(
            error("type=volume,target")
                .ends_with("invalid field 'target' must be a key=value pair")
        );
        assert_eq!(
            error("type=foo,target=/x"),
            "invalid mount config for type \"foo\": mount type unknown"
        );
        assert_eq!(
            error("type=bind,target=/x"),
            "invalid mount config for type \"bind\": field Source must not be empty"
        );
        assert_eq!(
            error("type=tmpfs,source=a,target=/x"),
            "invalid mount config for type \"tmpfs\": field Source must not be specified"
        );
        assert!(
            error("type=bind,source=/no/such/kiln/path,target=/x")
                .ends_with("bind source path does not exist: /no/such/kiln/path")
        );
        assert_eq!(csv_fields("a=1,\"b=x,y\""), ["a=1", "b=x,y"]);
    }

    #[test]
    fn volumes_from_modes() {
        assert_eq!(parse_volumes_from("web").unwrap(), ("web", None));
        assert_eq!(parse_volumes_from("web:ro").unwrap(), ("web", Some(true)));
        assert_eq!(
            parse_volumes_from("web:zz").unwrap_err().to_string(),
            "invalid mode: zz"
        );
    }

    #[test]
    fn volumes_are_created_once_listed_and_removed_unless_used() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let created = store
            .create_volume(Some("data"), BTreeMap::new(), Some(BTreeMap::new()))
            .unwrap();
        assert!(store.volume_data("data").is_dir());
        fs::write(store.volume_data("data").join("file"), "kept").unwrap();
        // Idempotent: the second create returns the same volume, content untouched.
        let again = store
            .create_volume(Some("data"), BTreeMap::new(), None)
            .unwrap();
        assert_eq!(created, again);
        assert!(store.volume_data("data").join("file").is_file());
        let anonymous = store.create_volume(None, BTreeMap::new(), None).unwrap();
        assert!(anonymous.is_anonymous() && anonymous.name.len() == 64);
        let names: Vec<String> = store
            .volumes()
            .unwrap()
            .into_iter()
            .map(|v| v.name)
            .collect();
        assert_eq!(names.len(), 2);
        assert!(matches!(
            store.create_volume(Some("a/b"), BTreeMap::new(), None),
            Err(VolumeError::InvalidName(_))
        ));
        assert!(matches!(
            store.create_volume(
                Some("x1"),
                BTreeMap::new(),
                Some([("type".into(), "nfs".into())].into())
            ),
            Err(VolumeError::UnsupportedOption(_))
        ));
        let (pruned, _) = store.prune_volumes(false).unwrap();
        assert_eq!(pruned, [anonymous.name]);
        store.remove_volume("data").unwrap();
        assert!(!store.volume_dir("data").exists());
        assert!(matches!(
            store.remove_volume("data"),
            Err(VolumeError::NoSuchVolume(_))
        ));
    }

    #[test]
    fn explicit_mounts_override_volumes_from_and_image_volumes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let explicit = vec![
            parse_volume_flag("named:/data").unwrap(),
            parse_tmpfs_flag("/run:size=1m").unwrap(),
        ];
        let mounts = store
            .resolve_mounts(explicit, vec![], &["/data".into(), "/cache/".into()])
            .unwrap();
        assert_eq!(mounts.len(), 3);
        assert_eq!(mounts[0].name, "named");
        assert!(mounts[0].source.ends_with("volumes/named/_data"));
        let image = &mounts[2];
        assert_eq!(
            (image.destination.as_str(), image.origin),
            ("/cache", MountOrigin::Image)
        );
        assert!(
            image.anonymous && image.copy_up && store.volume(&image.name).unwrap().is_anonymous()
        );
        let duplicate = store.resolve_mounts(
            vec![
                parse_volume_flag("a1:/x").unwrap(),
                parse_tmpfs_flag("/x/").unwrap(),
            ],
            vec![],
            &[],
        );
        assert_eq!(
            duplicate.unwrap_err().to_string(),
            "Duplicate mount point: /x"
        );
    }
}
