//! `kiln volume create|ls|inspect|rm|prune`, and the mount handling of `run`: parsing `-v`,
//! `--mount`, `--tmpfs`, resolving them in the store, turning them into sandbox mounts and
//! showing them in `inspect`.
//!
//! `volume prune` follows Docker 23+: anonymous volumes only, all unused volumes with `-a`.

use std::collections::BTreeMap;

use kiln_cache::container::ContainerConfig;
use kiln_cache::store::Store;
use kiln_cache::volume::{
    self, LOCAL_DRIVER, MountKind, MountOrigin, MountPoint, Volume, VolumeError, VolumeLock,
};
use kiln_runtime::{BindMount, TmpfsMount};
use kiln_template::Format;
use serde_json::{Value, json};

use super::{Global, open_store};
use crate::commands::image::render;
use crate::{Exit, human, output};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Create a volume
    Create(CreateArgs),
    /// List volumes
    #[command(alias = "list")]
    Ls(LsArgs),
    /// Display detailed information on one or more volumes
    Inspect(InspectArgs),
    /// Remove one or more volumes (refused while a container uses them)
    #[command(alias = "remove")]
    Rm(RmArgs),
    /// Remove unused anonymous volumes (all unused volumes with -a)
    Prune(PruneArgs),
}

pub fn run(global: &Global, command: Command) -> Exit {
    match command {
        Command::Create(args) => create(global, args),
        Command::Ls(args) => ls(global, args),
        Command::Inspect(args) => inspect(global, args),
        Command::Rm(args) => rm(global, args),
        Command::Prune(args) => prune(global, args),
    }
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// Volume driver name (only "local")
    #[arg(short = 'd', long, default_value = LOCAL_DRIVER)]
    driver: String,
    /// Set metadata for a volume (KEY=VALUE)
    #[arg(long = "label")]
    labels: Vec<String>,
    /// Driver options (kiln's local driver has none)
    #[arg(short = 'o', long = "opt")]
    options: Vec<String>,
    /// Volume name
    #[arg(long = "name")]
    name_flag: Option<String>,
    /// Volume name (a random one when omitted)
    name: Option<String>,
}

/// `KEY=VALUE` pairs (a bare `KEY` has an empty value), as Docker reads `--label`/`-o`.
fn pairs(list: &[String]) -> BTreeMap<String, String> {
    list.iter()
        .map(|pair| match pair.split_once('=') {
            Some((key, value)) => (key.to_string(), value.to_string()),
            None => (pair.clone(), String::new()),
        })
        .collect()
}

fn create(global: &Global, args: CreateArgs) -> Exit {
    let name = match (&args.name, &args.name_flag) {
        (Some(positional), Some(flag)) if positional != flag => {
            return output::error(format!(
                "conflicting options: either specify --name or provide positional arg, not both ({flag} and {positional})"
            ));
        }
        (Some(name), _) | (None, Some(name)) => Some(name.clone()),
        (None, None) => None,
    };
    let store = match open_store(global) {
        Ok(store) => store,
        Err(exit) => return exit,
    };
    if args.driver != LOCAL_DRIVER {
        return daemon_error(&VolumeError::UnknownDriver(args.driver));
    }
    // A volume made by `volume create` without a name is still a named one (Docker).
    let name = match name {
        Some(name) => name,
        None => match kiln_cache::container::new_id() {
            Ok(id) => id,
            Err(error) => return output::error_of(&error),
        },
    };
    let created = store.create_volume(Some(&name), pairs(&args.labels), Some(pairs(&args.options)));
    match created {
        Ok(volume) => {
            output::out(&format!("{}\n", volume.name));
            Exit::Success
        }
        Err(error) => daemon_error(&error),
    }
}

/// Docker's report of a failed daemon request: `Error response from daemon: ...`, exit 1.
fn daemon_error(error: &dyn std::error::Error) -> Exit {
    output::err(&format!("Error response from daemon: {error}\n"));
    Exit::Failure
}

#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// Only display volume names
    #[arg(short = 'q', long)]
    quiet: bool,
    /// Filter output: dangling=true|false, name=TEXT, label=KEY[=VALUE], driver=local
    #[arg(short = 'f', long = "filter")]
    filters: Vec<String>,
    /// Format: table, json, or a Go template
    #[arg(long)]
    format: Option<String>,
}

/// One `volume ls --filter`.
enum Filter {
    Dangling(bool),
    Name(String),
    Label(String, Option<String>),
    Driver(String),
}

impl Filter {
    fn parse(text: &str) -> Result<Filter, String> {
        let (key, value) = text
            .split_once('=')
            .ok_or_else(|| format!("bad format of filter (expected name=value): {text}"))?;
        Ok(match key {
            "dangling" => match value {
                "true" | "1" => Filter::Dangling(true),
                "false" | "0" => Filter::Dangling(false),
                _ => return Err(format!("invalid filter 'dangling={value}'")),
            },
            "name" => Filter::Name(value.to_string()),
            "label" => match value.split_once('=') {
                Some((label, wanted)) => Filter::Label(label.to_string(), Some(wanted.to_string())),
                None => Filter::Label(value.to_string(), None),
            },
            "driver" => Filter::Driver(value.to_string()),
            _ => return Err(format!("invalid filter '{key}'")),
        })
    }

    fn keeps(&self, volume: &Volume, users: usize) -> bool {
        match self {
            Filter::Dangling(dangling) => (users == 0) == *dangling,
            Filter::Name(text) => volume.name.contains(text.as_str()),
            Filter::Label(label, wanted) => volume
                .labels
                .get(label)
                .is_some_and(|value| wanted.as_ref().is_none_or(|wanted| wanted == value)),
            Filter::Driver(driver) => volume.driver == *driver,
        }
    }
}

/// How many containers use each volume (Docker's `Links`).
fn usage(store: &Store) -> Result<BTreeMap<String, usize>, String> {
    let mut users = BTreeMap::new();
    for record in store.containers().map_err(|error| error.to_string())? {
        for mount in &record.config.mounts {
            if mount.kind == MountKind::Volume {
                *users.entry(mount.name.clone()).or_insert(0) += 1;
            }
        }
    }
    Ok(users)
}

fn ls(global: &Global, args: LsArgs) -> Exit {
    let filters = match args
        .filters
        .iter()
        .map(|text| Filter::parse(text))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(filters) => filters,
        Err(message) => return output::error(message),
    };
    let store = match open_store(global) {
        Ok(store) => store,
        Err(exit) => return exit,
    };
    let (volumes, users) = match store
        .volumes()
        .map_err(|e| e.to_string())
        .and_then(|volumes| Ok((volumes, usage(&store)?)))
    {
        Ok(found) => found,
        Err(message) => return output::error(message),
    };
    let rows: Vec<Value> = volumes
        .iter()
        .filter(|volume| {
            let count = users.get(&volume.name).copied().unwrap_or(0);
            filters.iter().all(|filter| filter.keeps(volume, count))
        })
        .map(|volume| {
            json!({
                "Name": volume.name,
                "Driver": volume.driver,
                "Scope": "local",
                "Mountpoint": store.volume_data(&volume.name).display().to_string(),
                "Labels": volume.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","),
                "Links": users.get(&volume.name).copied().unwrap_or(0).to_string(),
                "Size": "N/A",
                "CreatedAt": volume.created_at,
            })
        })
        .collect();
    if args.quiet {
        output::out(
            &rows
                .iter()
                .filter_map(|row| row["Name"].as_str())
                .map(|name| format!("{name}\n"))
                .collect::<String>(),
        );
        return Exit::Success;
    }
    render(
        args.format.as_deref(),
        "table {{.Driver}}\t{{.Name}}",
        &rows,
        &|field| {
            Some(match field {
                "Name" => "VOLUME NAME".to_string(),
                "CreatedAt" => "CREATED AT".to_string(),
                other => other.to_ascii_uppercase(),
            })
        },
    )
}

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// Format the output using a Go template
    #[arg(short = 'f', long)]
    format: Option<String>,
    /// Volumes to inspect
    #[arg(required = true)]
    names: Vec<String>,
}

/// Docker's volume inspect object.
fn inspect_json(store: &Store, volume: &Volume) -> Value {
    json!({
        "CreatedAt": volume.created_at,
        "Driver": volume.driver,
        "Labels": volume.labels,
        "Mountpoint": store.volume_data(&volume.name).display().to_string(),
        "Name": volume.name,
        "Options": volume.options,
        "Scope": "local",
    })
}

fn inspect(global: &Global, args: InspectArgs) -> Exit {
    let store = match open_store(global) {
        Ok(store) => store,
        Err(exit) => return exit,
    };
    let mut objects = Vec::new();
    let mut exit = Exit::Success;
    for name in &args.names {
        match store.volume(name) {
            Ok(volume) => objects.push(inspect_json(&store, &volume)),
            Err(VolumeError::NoSuchVolume(_)) => {
                output::err(&format!("Error: No such volume: {name}\n"));
                exit = Exit::Failure;
            }
            Err(error) => return output::error_of(&error),
        }
    }
    match args.format {
        Some(format) => {
            let lines = Format::parse(&format).and_then(|format| {
                objects
                    .iter()
                    .map(|object| format.template().render(object))
                    .collect::<Result<Vec<_>, _>>()
            });
            match lines {
                Ok(lines) => output::out(
                    &lines
                        .iter()
                        .map(|line| format!("{line}\n"))
                        .collect::<String>(),
                ),
                Err(error) => return output::error(format!("template parsing error: {error}")),
            }
        }
        None => output::out(&format!(
            "{}\n",
            serde_json::to_string_pretty(&objects).unwrap_or_default()
        )),
    }
    exit
}

#[derive(Debug, clap::Args)]
pub struct RmArgs {
    /// Do not report volumes that do not exist (volumes in use are still refused, as in Docker)
    #[arg(short = 'f', long)]
    force: bool,
    /// Volumes to remove
    #[arg(required = true)]
    names: Vec<String>,
}

fn rm(global: &Global, args: RmArgs) -> Exit {
    let store = match open_store(global) {
        Ok(store) => store,
        Err(exit) => return exit,
    };
    let mut exit = Exit::Success;
    for name in &args.names {
        match store.remove_volume(name) {
            Ok(()) => output::out(&format!("{name}\n")),
            Err(VolumeError::NoSuchVolume(_)) if args.force => output::out(&format!("{name}\n")),
            Err(VolumeError::NoSuchVolume(_)) => {
                output::err(&format!("Error: No such volume: {name}\n"));
                exit = Exit::Failure;
            }
            Err(error) => exit = daemon_error(&error),
        }
    }
    exit
}

#[derive(Debug, clap::Args)]
pub struct PruneArgs {
    /// Remove all unused volumes, not just anonymous ones
    #[arg(short = 'a', long)]
    all: bool,
    /// Do not prompt for confirmation (kiln never prompts)
    #[arg(short = 'f', long)]
    force: bool,
}

fn prune(global: &Global, args: PruneArgs) -> Exit {
    let store = match open_store(global) {
        Ok(store) => store,
        Err(exit) => return exit,
    };
    let (removed, freed) = match store.prune_volumes(args.all) {
        Ok(pruned) => pruned,
        Err(error) => return output::error_of(&error),
    };
    let mut text = String::new();
    if !removed.is_empty() {
        text.push_str("Deleted Volumes:\n");
        for name in &removed {
            text.push_str(&format!("{name}\n"));
        }
        text.push('\n');
    }
    text.push_str(&format!("Total reclaimed space: {}\n", human::size(freed)));
    output::out(&text);
    Exit::Success
}

/// The mount flags of `run`, parsed before the store is touched: `-v`, `--mount`, `--tmpfs`
/// (tmpfs options checked by the runtime's parser), in that order.
pub fn requested_mounts(
    volumes: &[String],
    mounts: &[String],
    tmpfs: &[String],
) -> Result<Vec<MountPoint>, String> {
    let mut requested = Vec::new();
    for spec in volumes {
        requested.push(volume::parse_volume_flag(spec).map_err(|error| error.to_string())?);
    }
    for spec in mounts {
        requested.push(volume::parse_mount_flag(spec).map_err(|error| error.to_string())?);
    }
    for spec in tmpfs {
        requested.push(volume::parse_tmpfs_flag(spec).map_err(|error| error.to_string())?);
    }
    for mount in &requested {
        if mount.kind == MountKind::Tmpfs {
            TmpfsMount::parse(&mount.destination, &mount.tmpfs_options)
                .map_err(|error| error.to_string())?;
        }
    }
    Ok(requested)
}

/// Resolves the mounts of a new container in the store: `--volumes-from` containers' mounts,
/// the requested ones, anonymous volumes for the image's `VOLUME`s; creates the volumes
/// needed. Returns the shared volume lock with them: hold it until the container's record
/// (which marks the volumes in use) is written.
pub fn resolve_mounts(
    store: &Store,
    requested: Vec<MountPoint>,
    volumes_from: &[String],
    image_volumes: &[String],
) -> Result<(Vec<MountPoint>, VolumeLock), String> {
    let lock = store
        .volume_lock(false)
        .map_err(|error| error.to_string())?;
    let mut from = Vec::new();
    for spec in volumes_from {
        let (name, read_only) =
            volume::parse_volumes_from(spec).map_err(|error| error.to_string())?;
        let record = store.container(name).map_err(|error| error.to_string())?;
        from.extend(volume::volumes_from(&record.config.mounts, read_only));
    }
    let mounts = store
        .resolve_mounts(requested, from, image_volumes)
        .map_err(|error| error.to_string())?;
    Ok((mounts, lock))
}

/// The sandbox's bind and tmpfs mounts for a container's resolved mounts.
pub fn sandbox_mounts(mounts: &[MountPoint]) -> Result<(Vec<BindMount>, Vec<TmpfsMount>), String> {
    let mut binds = Vec::new();
    let mut tmpfs = Vec::new();
    for mount in mounts {
        match mount.kind {
            MountKind::Bind | MountKind::Volume => binds.push(BindMount {
                source: mount.source.clone().into(),
                destination: mount.destination.clone(),
                read_only: !mount.rw,
                copy_up: mount.kind == MountKind::Volume && mount.copy_up,
            }),
            MountKind::Tmpfs => tmpfs.push(
                TmpfsMount::parse(&mount.destination, &mount.tmpfs_options)
                    .map_err(|error| error.to_string())?,
            ),
        }
    }
    Ok((binds, tmpfs))
}

/// Docker's inspect `Mounts`: every bind, volume and `--mount` tmpfs (a `--tmpfs` shows only in
/// `HostConfig.Tmpfs`, as in Docker).
pub fn mounts_json(mounts: &[MountPoint]) -> Value {
    let list: Vec<Value> = mounts
        .iter()
        .filter(|mount| mount.origin != MountOrigin::Tmpfs)
        .map(|mount| {
            let mut object = json!({
                "Type": mount.kind.to_string(),
                "Source": mount.source,
                "Destination": mount.destination,
                "Mode": mount.mode,
                "RW": mount.rw,
                "Propagation": mount.propagation(),
            });
            if mount.kind == MountKind::Volume {
                object["Name"] = json!(mount.name);
                object["Driver"] = json!(LOCAL_DRIVER);
            }
            object
        })
        .collect();
    Value::Array(list)
}

/// The mount and name-resolution parts of Docker's inspect `HostConfig`: `Binds` (the `-v`
/// values), `Mounts` (the `--mount` values as objects), `Tmpfs`, `VolumesFrom`, `ExtraHosts`,
/// `Dns`, `DnsSearch`, `DnsOptions`. Empty lists are `null` where Docker shows `null`, and
/// `Mounts`/`Tmpfs` are left out when empty, as Docker omits them.
pub fn host_config_json(config: &ContainerConfig) -> serde_json::Map<String, Value> {
    let null_if_empty = |list: &[String]| {
        if list.is_empty() {
            Value::Null
        } else {
            json!(list)
        }
    };
    let binds: Vec<String> = config
        .mounts
        .iter()
        .filter(|mount| mount.origin == MountOrigin::Volume)
        .map(|mount| mount.spec.clone())
        .collect();
    let mounts: Vec<Value> = config
        .mounts
        .iter()
        .filter(|mount| mount.origin == MountOrigin::Mount)
        .map(|mount| {
            let mut object = json!({
                "Type": mount.kind.to_string(),
                "Target": mount.destination,
            });
            // As given: the volume name (none for an anonymous one), the bind's host path.
            let source = match mount.kind {
                MountKind::Volume if mount.anonymous => "",
                MountKind::Volume => mount.name.as_str(),
                MountKind::Bind => mount.source.as_str(),
                MountKind::Tmpfs => "",
            };
            if !source.is_empty() {
                object["Source"] = json!(source);
            }
            if !mount.rw {
                object["ReadOnly"] = json!(true);
            }
            if mount.kind == MountKind::Volume && !mount.copy_up {
                object["VolumeOptions"] = json!({ "NoCopy": true });
            }
            if mount.kind == MountKind::Tmpfs {
                let mut options = serde_json::Map::new();
                if let Some(size) = mount.tmpfs_size {
                    options.insert("SizeBytes".into(), json!(size));
                }
                if let Some(mode) = mount.tmpfs_mode {
                    options.insert("Mode".into(), json!(mode));
                }
                object["TmpfsOptions"] = Value::Object(options);
            }
            object
        })
        .collect();
    let tmpfs: serde_json::Map<String, Value> = config
        .mounts
        .iter()
        .filter(|mount| mount.origin == MountOrigin::Tmpfs)
        .map(|mount| (mount.destination.clone(), json!(mount.tmpfs_options)))
        .collect();
    let mut host = serde_json::Map::new();
    host.insert("Binds".into(), null_if_empty(&binds));
    if !mounts.is_empty() {
        host.insert("Mounts".into(), Value::Array(mounts));
    }
    if !tmpfs.is_empty() {
        host.insert("Tmpfs".into(), Value::Object(tmpfs));
    }
    host.insert("VolumesFrom".into(), null_if_empty(&config.volumes_from));
    host.insert("ExtraHosts".into(), null_if_empty(&config.extra_hosts));
    host.insert("Dns".into(), json!(config.dns));
    host.insert("DnsSearch".into(), json!(config.dns_search));
    host.insert("DnsOptions".into(), json!(config.dns_options));
    host
}
