//! Container commands: `run` (foreground or detached), `start`, `stop`, `kill`, `wait`,
//! `logs`, `ps`, `rm`.
//!
//! A detached container runs under a monitor (see `crate::monitor`); these handlers find it
//! through the container's recorded state and signal the container's PID 1 through the
//! runtime.

use std::path::{Path, PathBuf};

use kiln_builder::container::{ProcessOptions, process_config};
use kiln_cache::container::{
    ContainerRecord, ContainerState, LogEntry, LogReader, LogStream, Status,
};
use kiln_cache::image::ImageConfig;
use kiln_cache::store::Store;
use kiln_runtime::{Dns, HostEntry, Network, Resources, Seccomp, Spec, Ulimit};
use serde_json::{Value, json};

use super::{Global, open_store, volume};
use crate::commands::image::render;
use crate::monitor::{MONITOR_MARKER, SPEC_FILE, StartFailure};
use crate::output;
use crate::{Exit, human};

#[derive(Debug, clap::Args)]
#[command(trailing_var_arg = true, disable_help_flag = true)]
pub struct RunArgs {
    /// Print help (`-h` is the host name, as in docker)
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
    /// Automatically remove the container when it exits
    #[arg(long)]
    rm: bool,
    /// Assign a name to the container
    #[arg(long)]
    name: Option<String>,
    /// Set environment variables (NAME=VALUE, or NAME to take kiln's own value)
    #[arg(short = 'e', long = "env", value_name = "NAME[=VALUE]")]
    env: Vec<String>,
    /// Read environment variables from a file (NAME=VALUE lines, # comments)
    #[arg(long = "env-file", value_name = "FILE")]
    env_files: Vec<PathBuf>,
    /// Working directory inside the container
    #[arg(short = 'w', long = "workdir")]
    workdir: Option<String>,
    /// Username or UID (format: name|uid[:group|gid])
    #[arg(short = 'u', long)]
    user: Option<String>,
    /// Container host name
    #[arg(short = 'h', long)]
    hostname: Option<String>,
    /// Overwrite the default ENTRYPOINT of the image
    #[arg(long)]
    entrypoint: Option<String>,
    /// Network: none (only loopback; the default until bridge networking lands) or host
    #[arg(long, default_value = "none")]
    network: String,
    /// Mount the container's root filesystem as read only
    #[arg(long = "read-only")]
    read_only: bool,
    /// Bind mount a host path or mount a volume: /HOST:/CTR[:MODE], NAME:/CTR[:MODE]
    /// (created if missing), /CTR (anonymous volume); MODE: ro, rw, nocopy
    #[arg(short = 'v', long = "volume", value_name = "SOURCE:CONTAINER[:MODE]")]
    volumes: Vec<String>,
    /// Attach a filesystem mount: type=bind|volume|tmpfs,source=,target=,readonly,
    /// volume-nocopy,tmpfs-size=,tmpfs-mode=
    #[arg(long = "mount")]
    mounts: Vec<String>,
    /// Mount a tmpfs directory: /CTR[:OPTIONS] (size=64m,mode=1777,exec,...)
    #[arg(long = "tmpfs")]
    tmpfs: Vec<String>,
    /// Mount the volumes of a container: CONTAINER[:ro|rw]
    #[arg(long = "volumes-from")]
    volumes_from: Vec<String>,
    /// Add a custom host-to-IP mapping to /etc/hosts (HOST:IP)
    #[arg(long = "add-host")]
    add_hosts: Vec<String>,
    /// Set custom DNS servers
    #[arg(long = "dns")]
    dns: Vec<String>,
    /// Set custom DNS search domains ("." for none)
    #[arg(long = "dns-search")]
    dns_search: Vec<String>,
    /// Set DNS options
    #[arg(long = "dns-option", alias = "dns-opt")]
    dns_options: Vec<String>,
    /// Set metadata on the container (KEY=VALUE)
    #[arg(short = 'l', long = "label")]
    labels: Vec<String>,
    /// Keep STDIN open (kiln always passes its stdin to a foreground container)
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Allocate a pseudo-TTY
    #[arg(short = 't', long)]
    tty: bool,
    /// Run container in background and print container ID
    #[arg(short = 'd', long)]
    detach: bool,
    /// Publish a port (needs bridge networking, not yet supported)
    #[arg(short = 'p', long = "publish")]
    publish: Vec<String>,
    /// Memory limit (e.g. 64m, 1g)
    #[arg(short = 'm', long)]
    memory: Option<String>,
    /// Memory plus swap limit; -1 for unlimited swap
    #[arg(long = "memory-swap")]
    memory_swap: Option<String>,
    /// Number of CPUs
    #[arg(long)]
    cpus: Option<f64>,
    /// CPU shares (relative weight)
    #[arg(short = 'c', long = "cpu-shares")]
    cpu_shares: Option<u64>,
    /// CPUs in which to allow execution (0-3, 0,1)
    #[arg(long = "cpuset-cpus")]
    cpuset_cpus: Option<String>,
    /// Tune the container's pids limit (-1 for unlimited)
    #[arg(long = "pids-limit", allow_hyphen_values = true)]
    pids_limit: Option<i64>,
    /// Ulimit options (NAME=SOFT[:HARD], e.g. nofile=1024:2048)
    #[arg(long = "ulimit")]
    ulimits: Vec<String>,
    /// Add Linux capabilities
    #[arg(long = "cap-add")]
    cap_add: Vec<String>,
    /// Drop Linux capabilities
    #[arg(long = "cap-drop")]
    cap_drop: Vec<String>,
    /// Give extended privileges to this container
    #[arg(long)]
    privileged: bool,
    /// Security options: seccomp=unconfined|PROFILE.json, no-new-privileges[=true|false]
    #[arg(long = "security-opt")]
    security_opts: Vec<String>,
    #[command(flatten)]
    supervision: super::attach::SupervisionArgs,
    /// The image
    image: String,
    /// The command and its arguments (replace the image's CMD)
    args: Vec<String>,
}

/// Reads an `--env-file`: `NAME=VALUE` or `NAME` lines; blank lines and `#` comments skipped.
fn env_file(path: &Path) -> Result<Vec<String>, String> {
    let text =
        std::fs::read_to_string(path).map_err(|error| format!("{}: {error}", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim_start)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_string)
        .collect())
}

fn unsupported(args: &RunArgs) -> Option<String> {
    if !args.publish.is_empty() {
        return Some(
            "-p needs bridge networking, which kiln does not have yet; use --network host".into(),
        );
    }
    None
}

pub fn run(global: &Global, args: RunArgs) -> Exit {
    run_or_create(global, args, false)
}

/// Docker's `create`: `run`'s flags and checks, the container recorded (status `Created`)
/// with its spec and settings, its ID printed; `start` runs it.
pub fn create(global: &Global, args: RunArgs) -> Exit {
    run_or_create(global, args, true)
}

fn run_or_create(global: &Global, args: RunArgs, create_only: bool) -> Exit {
    if let Some(message) = unsupported(&args) {
        return output::error(message);
    }
    let network = match args.network.as_str() {
        "none" => Network::None,
        "host" => Network::Host,
        other => {
            return output::error(format!(
                "network {other:?} is not supported yet: use none or host"
            ));
        }
    };
    let mut env = Vec::new();
    for file in &args.env_files {
        match env_file(file) {
            Ok(lines) => env.extend(lines),
            Err(message) => return output::error(message),
        }
    }
    env.extend(args.env.iter().cloned());
    let requested = match volume::requested_mounts(&args.volumes, &args.mounts, &args.tmpfs) {
        Ok(requested) => requested,
        Err(message) => return output::error(message),
    };
    let (extra_hosts, dns) = match name_resolution(&args) {
        Ok(parsed) => parsed,
        Err(message) => return output::error(message),
    };
    let (resources, ulimits, seccomp, no_new_privileges) = match limits(&args) {
        Ok(parsed) => parsed,
        Err(message) => return output::error(message),
    };
    let store = match open_store(global) {
        Ok(store) => store,
        Err(exit) => return exit,
    };
    let image = match store.resolve(&args.image).and_then(|id| store.image(&id)) {
        Ok(image) => image,
        Err(error) => {
            return output::error(format!("unable to find image '{}': {error}", args.image));
        }
    };
    let image_config: ImageConfig = match store
        .blobs()
        .read(&image.id)
        .map_err(|e| e.to_string())
        .and_then(|bytes| serde_json::from_slice(&bytes).map_err(|e| e.to_string()))
    {
        Ok(config) => config,
        Err(message) => {
            return output::error(format!("image {}: unreadable config: {message}", image.id));
        }
    };
    let supervision = match args.supervision.resolve(
        args.tty,
        args.interactive,
        args.rm,
        super::attach::RunMode::of(args.detach, create_only),
        &image_config,
    ) {
        Ok(supervision) => supervision,
        Err(message) => return output::error(message),
    };
    let options = ProcessOptions {
        image_name: args.image.clone(),
        args: args.args.clone(),
        entrypoint: args.entrypoint.clone(),
        env,
        working_dir: args.workdir.clone(),
        user: args.user.clone(),
        hostname: args.hostname.clone(),
        network: args.network.clone(),
        labels: args
            .labels
            .iter()
            .map(|label| {
                label
                    .split_once('=')
                    .map_or((label.clone(), String::new()), |(k, v)| {
                        (k.into(), v.into())
                    })
            })
            .collect(),
        auto_remove: args.rm,
        read_only: args.read_only,
    };
    let mut config = match process_config(&image_config, &options, &|name| std::env::var(name).ok())
    {
        Ok(config) => config,
        Err(error) => return output::error(error),
    };
    // The volume lock (shared) is held until the record marks the volumes in use.
    let (binds, tmpfs, volume_lock) = match volume::resolve_mounts(
        &store,
        requested,
        &args.volumes_from,
        &image_volumes(&image_config),
    )
    .and_then(|(mounts, lock)| {
        let (binds, tmpfs) = volume::sandbox_mounts(&mounts)?;
        config.mounts = mounts;
        Ok((binds, tmpfs, lock))
    }) {
        Ok(resolved) => resolved,
        Err(message) => return output::error(message),
    };
    config.volumes_from = args.volumes_from.clone();
    config.extra_hosts = args.add_hosts.clone();
    config.dns = args.dns.clone();
    config.dns_search = args.dns_search.clone();
    config.dns_options = args.dns_options.clone();
    let created = kiln_cache::import::creation_time();
    let record =
        match store.create_container(&image.id, args.name.as_deref(), config.clone(), created) {
            Ok(record) => record,
            Err(error) => {
                drop(volume_lock);
                // The anonymous volumes made for this container have no user now.
                let _ = store.remove_anonymous_volumes(&config.mounts);
                return output::error_of(&error);
            }
        };
    drop(volume_lock);
    if config.hostname.is_empty() {
        config.hostname = record.short_id().to_string();
    }
    if let Err(error) = store.set_container_supervision(&record.id, &supervision) {
        return output::error_of(&error);
    }
    let dir = store.container_dir(&record.id);
    let spec = Spec {
        id: record.id.clone(),
        resources,
        ulimits,
        cap_add: args.cap_add.clone(),
        cap_drop: args.cap_drop.clone(),
        privileged: args.privileged,
        seccomp,
        no_new_privileges,
        container_dir: dir.clone(),
        lower_dirs: image
            .layers
            .iter()
            .map(|layer| store.snapshot_path(&layer.chain_id))
            .collect(),
        upper_dir: dir.join("upper"),
        work_dir: dir.join("work"),
        args: config.args.clone(),
        env: config.env.clone(),
        cwd: config.working_dir.clone(),
        user: Some(config.user.clone()).filter(|user| !user.is_empty()),
        hostname: config.hostname.clone(),
        network,
        read_only: config.read_only,
        mounts: binds,
        tmpfs,
        extra_hosts,
        dns,
        tty: supervision.tty,
        console_size: None,
        init: supervision.init,
    };
    let program = match std::env::current_exe() {
        Ok(program) => program,
        Err(error) => {
            return output::error(format!(
                "cannot find the kiln binary to start the container: {error}"
            ));
        }
    };
    // Kept for `start`, which runs the container again detached with the same spec.
    let spec_path = dir.join(SPEC_FILE);
    if let Err(error) = serde_json::to_vec(&spec)
        .map_err(std::io::Error::from)
        .and_then(|bytes| std::fs::write(&spec_path, bytes))
    {
        return output::error(format!("writing {}: {error}", spec_path.display()));
    }
    if create_only {
        output::out(&format!("{}\n", record.id));
        return Exit::Success;
    }
    if args.detach {
        return match start_monitor(&store, &record.id, &program) {
            Ok(()) => {
                output::out(&format!("{}\n", record.id));
                Exit::Success
            }
            Err(failure) => {
                output::err(&format!("kiln: {}\n", failure.message));
                Exit::Code(u8::try_from(failure.code.clamp(0, 255)).unwrap_or(125))
            }
        };
    }
    let running = ContainerState {
        status: Status::Running,
        pid: std::process::id() as i32,
        started_at: Some(kiln_cache::import::creation_time()),
        ..ContainerState::default()
    };
    let _ = store.set_container_state(&record.id, &running);
    let result = super::attach::run_foreground(&spec, &program, args.interactive);
    let (code, oom_killed, failure) = match &result {
        Ok(outcome) => (outcome.code(), outcome.oom_killed, None),
        Err(error) => (error.exit_code(), false, Some(error)),
    };
    let finished = ContainerState {
        status: Status::Exited,
        exit_code: code,
        oom_killed,
        finished_at: Some(kiln_cache::import::creation_time()),
        ..running
    };
    if args.rm {
        if let Err(error) = store.remove_container(&record.id) {
            output::err(&format!(
                "kiln: removing container {}: {error}\n",
                record.short_id()
            ));
        }
    } else {
        let _ = store.set_container_state(&record.id, &finished);
    }
    if let Some(error) = failure {
        output::err(&format!("kiln: {error}\n"));
    }
    Exit::Code(u8::try_from(code.clamp(0, 255)).unwrap_or(125))
}

/// The resource limits, ulimits and security options of `run`.
fn limits(args: &RunArgs) -> Result<(Resources, Vec<Ulimit>, Seccomp, bool), String> {
    let resources = Resources {
        memory: args
            .memory
            .as_deref()
            .map(ram_in_bytes)
            .transpose()?
            .map(|bytes| bytes.max(0) as u64),
        memory_swap: args.memory_swap.as_deref().map(ram_in_bytes).transpose()?,
        cpus: args.cpus,
        cpu_shares: args.cpu_shares,
        cpuset_cpus: args.cpuset_cpus.clone(),
        pids_limit: args.pids_limit,
    };
    let ulimits = args
        .ulimits
        .iter()
        .map(|text| {
            text.parse::<Ulimit>()
                .map_err(|error| format!("invalid --ulimit {text:?}: {error}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut seccomp = Seccomp::Default;
    let mut no_new_privileges = false;
    for option in &args.security_opts {
        let (key, value) = option
            .split_once(['=', ':'])
            .unwrap_or((option.as_str(), ""));
        match key {
            "seccomp" if value == "unconfined" => seccomp = Seccomp::Unconfined,
            "seccomp" => {
                let profile = std::fs::read_to_string(value).map_err(|error| {
                    format!("opening seccomp profile ({value}) failed: {error}")
                })?;
                seccomp = Seccomp::Profile(profile);
            }
            "no-new-privileges" => {
                no_new_privileges = match value {
                    "" | "true" => true,
                    "false" => false,
                    other => {
                        return Err(format!(
                            "invalid --security-opt no-new-privileges value {other:?}"
                        ));
                    }
                };
            }
            _ => {
                return Err(format!(
                    "invalid --security-opt {option:?}: kiln supports seccomp= and no-new-privileges"
                ));
            }
        }
    }
    Ok((resources, ulimits, seccomp, no_new_privileges))
}

/// Docker's `RAMInBytes`: `512`, `64k`, `32m`, `1g` (binary units, case-insensitive, optional
/// `b`); `-1` is kept (unlimited swap).
fn ram_in_bytes(text: &str) -> Result<i64, String> {
    if text == "-1" {
        return Ok(-1);
    }
    kiln_cache::units::ram_in_bytes(text)
        .and_then(|bytes| i64::try_from(bytes).ok())
        .ok_or_else(|| format!("invalid size: '{text}'"))
}

/// The image config's `VOLUME`s (each gets an anonymous volume unless mounted otherwise).
fn image_volumes(image: &ImageConfig) -> Vec<String> {
    image
        .config
        .volumes
        .iter()
        .flatten()
        .map(|(path, _)| path.clone())
        .collect()
}

/// `--add-host` entries and the `--dns*` settings, as the runtime takes them.
fn name_resolution(args: &RunArgs) -> Result<(Vec<HostEntry>, Dns), String> {
    let hosts = args
        .add_hosts
        .iter()
        .map(|text| text.parse::<HostEntry>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| error.to_string())?;
    let dns = Dns::parse(&args.dns, &args.dns_search, &args.dns_options)
        .map_err(|error| error.to_string())?;
    Ok((hosts, dns))
}

/// Starts the monitor of container `id` (whose `spec.json` is written) and waits until it has
/// started the container and recorded it as running, or failed to (the error and its exit
/// code, also in the container's log).
pub(crate) fn start_monitor(store: &Store, id: &str, program: &Path) -> Result<(), StartFailure> {
    // The monitor runs in `/`: a relative `--root` must become absolute.
    let root = std::path::absolute(store.layout().root()).map_err(|error| StartFailure {
        code: 125,
        message: format!("resolving the store path: {error}"),
    })?;
    let args = [
        std::ffi::OsStr::new(MONITOR_MARKER),
        root.as_os_str(),
        std::ffi::OsStr::new(id),
    ];
    let (_, ready) =
        kiln_runtime::spawn_detached(program, &args).map_err(|error| StartFailure {
            code: 125,
            message: format!("starting the container monitor: {error}"),
        })?;
    let mut line = String::new();
    let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(ready), &mut line);
    StartFailure::from_line(&line)
}

/// The process whose life is the container's: the monitor of a detached container, the
/// `kiln run` process of a foreground one.
pub(crate) fn supervisor(state: &ContainerState) -> i32 {
    if state.monitor_pid != 0 {
        state.monitor_pid
    } else {
        state.pid
    }
}

/// A container whose recorded supervisor (monitor or `kiln run` process) is gone is not running
/// any more: its init died with it (parent-death signal).
pub(crate) fn current_state(store: &Store, record: &ContainerRecord) -> ContainerState {
    let mut state = record.state.clone();
    if matches!(state.status, Status::Running | Status::Restarting)
        && !kiln_runtime::process_exists(supervisor(&state))
    {
        state = ContainerState {
            status: Status::Exited,
            exit_code: 137,
            finished_at: state.started_at.clone(),
            ..state
        };
        let _ = store.set_container_state(&record.id, &state);
    }
    state
}

/// Whether a running container is paused (its cgroup frozen): Docker's `Paused` state.
fn paused(id: &str, state: &ContainerState) -> bool {
    state.status == Status::Running && kiln_runtime::container_paused(id)
}

/// Docker's STATUS column: `Created`, `Up 3 minutes`, `Exited (0) 2 seconds ago`.
fn status_text(state: &ContainerState) -> String {
    match state.status {
        Status::Created => "Created".to_string(),
        Status::Running => format!(
            "Up {}{}",
            human::since(state.started_at.as_deref()).trim_end_matches(" ago"),
            super::attach::health_suffix(state)
        ),
        Status::Restarting => format!(
            "Restarting ({}) {}",
            state.exit_code,
            human::since(state.finished_at.as_deref())
        ),
        Status::Exited => format!(
            "Exited ({}) {}",
            state.exit_code,
            human::since(state.finished_at.as_deref())
        ),
    }
}

#[derive(Debug, clap::Args)]
pub struct PsArgs {
    /// Show all containers (default shows just running)
    #[arg(short = 'a', long)]
    all: bool,
    /// Only display container IDs
    #[arg(short = 'q', long)]
    quiet: bool,
    /// Don't truncate output
    #[arg(long = "no-trunc")]
    no_trunc: bool,
    /// Show the latest created container
    #[arg(short = 'l', long)]
    latest: bool,
    /// Show the n last created containers
    #[arg(short = 'n', long)]
    last: Option<usize>,
    /// Filter output based on conditions provided (id=, name=, label=, status=, exited=,
    /// ancestor=, health=, before=, since=)
    #[arg(short = 'f', long = "filter", value_name = "FILTER")]
    filters: Vec<String>,
    /// Format: table, json, or a Go template
    #[arg(long)]
    format: Option<String>,
}

/// `ps --filter` conditions, as Docker's daemon applies them (`daemon/list.go`): values of one
/// key are alternatives, different keys must all hold.
#[derive(Debug, Default)]
struct PsFilter {
    ids: Vec<String>,
    names: Vec<String>,
    labels: Vec<String>,
    statuses: Vec<String>,
    exited: Vec<i32>,
    ancestors: Vec<String>,
    health: Vec<String>,
    before: Vec<String>,
    since: Vec<String>,
}

/// Docker's container states for `status=`.
const FILTER_STATUSES: [&str; 7] = [
    "created",
    "restarting",
    "running",
    "removing",
    "paused",
    "exited",
    "dead",
];

impl PsFilter {
    /// Parses `KEY=VALUE` filters; Docker's errors for unknown keys and bad values.
    fn parse(filters: &[String]) -> Result<PsFilter, String> {
        let mut filter = PsFilter::default();
        for text in filters {
            let Some((key, value)) = text.split_once('=') else {
                return Err(format!(
                    "bad format of filter (expected name=value): {text}"
                ));
            };
            let value = value.to_string();
            match key.to_ascii_lowercase().as_str() {
                "id" => filter.ids.push(value),
                "name" => filter.names.push(value),
                "label" => filter.labels.push(value),
                "status" if FILTER_STATUSES.contains(&value.as_str()) => {
                    filter.statuses.push(value)
                }
                "status" => return Err(format!("Invalid filter 'status={value}'")),
                "exited" => filter.exited.push(
                    value
                        .parse()
                        .map_err(|_| format!("invalid filter 'exited={value}'"))?,
                ),
                "ancestor" => filter.ancestors.push(value),
                "health"
                    if ["starting", "healthy", "unhealthy", "none"].contains(&value.as_str()) =>
                {
                    filter.health.push(value)
                }
                "health" => return Err(format!("Unrecognised filter value for health: {value}")),
                "before" => filter.before.push(value),
                "since" => filter.since.push(value),
                _ => return Err(format!("invalid filter '{key}'")),
            }
        }
        Ok(filter)
    }

    /// A `status=` filter lists stopped containers without `-a`, as with Docker.
    fn shows_all(&self) -> bool {
        !self.statuses.is_empty()
    }

    /// Whether the container passes every condition. `state_name` is Docker's `State`
    /// (`paused` for a frozen container); `store` resolves `ancestor=`, `before=`, `since=`.
    fn keeps(
        &self,
        store: &Store,
        record: &ContainerRecord,
        state: &ContainerState,
        state_name: &str,
    ) -> bool {
        let any = |values: &[String], test: &dyn Fn(&str) -> bool| {
            values.is_empty() || values.iter().any(|value| test(value))
        };
        let health = match (&state.health, state.status) {
            (Some(health), Status::Running | Status::Exited | Status::Restarting) => {
                health.status.as_str()
            }
            _ => "none",
        };
        let created = |name: &str| store.container(name).ok().map(|other| other.created);
        any(&self.ids, &|value| docker_match(value, &record.id))
            && any(&self.names, &|value| {
                docker_match(value, &format!("/{}", record.name))
            })
            && self.labels.iter().all(|value| match value.split_once('=') {
                Some((key, wanted)) => {
                    record.config.labels.get(key).map(String::as_str) == Some(wanted)
                }
                None => record.config.labels.contains_key(value.as_str()),
            })
            && any(&self.statuses, &|value| value == state_name)
            && (self.exited.is_empty()
                || (state.status == Status::Exited
                    && state.started_at.is_some()
                    && self.exited.contains(&state.exit_code)))
            && any(&self.ancestors, &|value| {
                record.config.image_name == value
                    || store
                        .resolve(value)
                        .is_ok_and(|digest| digest == record.image)
            })
            && any(&self.health, &|value| value == health)
            && self
                .before
                .iter()
                .all(|name| created(name).is_some_and(|created| record.created < created))
            && self
                .since
                .iter()
                .all(|name| created(name).is_some_and(|created| record.created > created))
    }
}

/// Docker's filter value match (`filters.Args.Match`, a regular expression search): kiln
/// supports the forms used in practice, a substring with an optional `^` and `$` anchor.
fn docker_match(pattern: &str, text: &str) -> bool {
    let (start, pattern) = match pattern.strip_prefix('^') {
        Some(rest) => (true, rest),
        None => (false, pattern),
    };
    let (end, pattern) = match pattern.strip_suffix('$') {
        Some(rest) => (true, rest),
        None => (false, pattern),
    };
    match (start, end) {
        (true, true) => text == pattern,
        (true, false) => text.starts_with(pattern),
        (false, true) => text.ends_with(pattern),
        (false, false) => text.contains(pattern),
    }
}

pub fn ps(global: &Global, args: PsArgs) -> Exit {
    let filter = match PsFilter::parse(&args.filters) {
        Ok(filter) => filter,
        Err(message) => {
            output::err(&format!("Error response from daemon: {message}\n"));
            return Exit::Failure;
        }
    };
    let store = match open_store(global) {
        Ok(store) => store,
        Err(exit) => return exit,
    };
    let containers = match store.containers() {
        Ok(containers) => containers,
        Err(error) => return output::error_of(&error),
    };
    let limit = if args.latest { Some(1) } else { args.last };
    let show_all = args.all || limit.is_some() || filter.shows_all();
    let rows: Vec<Value> = containers
        .iter()
        .map(|record| (record, current_state(&store, record)))
        .filter(|(_, state)| {
            show_all || matches!(state.status, Status::Running | Status::Restarting)
        })
        .filter(|(record, state)| {
            let state_name = if paused(&record.id, state) {
                "paused".to_string()
            } else {
                serde_json::to_value(state.status)
                    .ok()
                    .and_then(|value| value.as_str().map(str::to_string))
                    .unwrap_or_default()
            };
            filter.keeps(&store, record, state, &state_name)
        })
        .take(limit.unwrap_or(usize::MAX))
        .map(|(record, state)| {
            let command = record.config.args.join(" ");
            let command = if args.no_trunc || command.chars().count() <= 20 {
                format!("\"{command}\"")
            } else {
                format!("\"{}…\"", command.chars().take(19).collect::<String>())
            };
            let paused = paused(&record.id, &state);
            json!({
                "ID": if args.no_trunc { record.id.clone() } else { record.short_id().to_string() },
                "Image": record.config.image_name,
                "Command": command,
                "CreatedAt": record.created,
                "RunningFor": human::since(Some(&record.created)),
                "Status": if paused { format!("{} (Paused)", status_text(&state)) } else { status_text(&state) },
                "State": if paused { json!("paused") } else { serde_json::to_value(state.status).unwrap_or(Value::Null) },
                "Ports": "",
                "Names": record.name,
                "Labels": record.config.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","),
                "Networks": record.config.network,
            })
        })
        .collect();
    if args.quiet {
        output::out(
            &rows
                .iter()
                .filter_map(|row| row["ID"].as_str())
                .map(|id| format!("{id}\n"))
                .collect::<String>(),
        );
        return Exit::Success;
    }
    render(
        args.format.as_deref(),
        "table {{.ID}}\t{{.Image}}\t{{.Command}}\t{{.RunningFor}}\t{{.Status}}\t{{.Ports}}\t{{.Names}}",
        &rows,
        &|field| {
            Some(
                match field {
                    "ID" => "CONTAINER ID",
                    "RunningFor" => "CREATED",
                    "CreatedAt" => "CREATED AT",
                    other => return Some(other.to_ascii_uppercase()),
                }
                .to_string(),
            )
        },
    )
}

#[derive(Debug, clap::Args)]
pub struct RmArgs {
    /// Force the removal of a running container
    #[arg(short = 'f', long)]
    force: bool,
    /// Remove anonymous volumes associated with the container (named volumes stay)
    #[arg(short = 'v', long)]
    volumes: bool,
    /// Containers to remove
    #[arg(required = true)]
    containers: Vec<String>,
}

pub fn rm(global: &Global, args: RmArgs) -> Exit {
    let store = match open_store(global) {
        Ok(store) => store,
        Err(exit) => return exit,
    };
    let mut exit = Exit::Success;
    for name in &args.containers {
        let result = store.container(name).and_then(|record| {
            let state = current_state(&store, &record);
            let active = matches!(state.status, Status::Running | Status::Restarting);
            if active && !args.force {
                return Ok(Err(format!(
                    "cannot remove container \"/{}\": container is running: stop the container before removing or force remove",
                    record.name
                )));
            }
            if active {
                // Docker's `rm -f`: SIGKILL, then the supervisor records the exit; marked
                // stopped first, so a restart policy does not bring it back.
                let _ = store.set_container_stopped_by_hand(&record.id, true);
                let _ = kiln_runtime::signal_container(&record.id, libc_signal::SIGKILL);
                kiln_runtime::wait_for_exit(supervisor(&state), Some(std::time::Duration::from_secs(10)));
            }
            // A run killed with kill -9 may leave its (empty) cgroup behind.
            let _ = kiln_runtime::remove_cgroup(&record.id);
            store.remove_container(&record.id)?;
            if args.volumes
                && let Err(error) = store.remove_anonymous_volumes(&record.config.mounts)
            {
                return Ok(Err(error.to_string()));
            }
            Ok(Ok(()))
        });
        match result {
            Ok(Ok(())) => output::out(&format!("{name}\n")),
            Ok(Err(message)) => {
                output::err(&format!("Error response: {message}\n"));
                exit = Exit::Failure;
            }
            Err(error) => {
                output::err(&format!("Error: {error}\n"));
                exit = Exit::Failure;
            }
        }
    }
    exit
}

/// Docker's container inspect object.
pub fn inspect_json(store: &Store, record: &ContainerRecord) -> Value {
    let mut value = inspect_base(store, record);
    super::attach::add_supervision(store, record, &mut value);
    value
}

fn inspect_base(store: &Store, record: &ContainerRecord) -> Value {
    let state = current_state(store, record);
    let paused = paused(&record.id, &state);
    let config = &record.config;
    let (path, args) = config
        .args
        .split_first()
        .map_or((String::new(), Vec::new()), |(path, args)| {
            (path.clone(), args.to_vec())
        });
    let mut inspect = json!({
        "Id": record.id,
        "Created": record.created,
        "Path": path,
        "Args": args,
        "State": {
            "Status": if paused { json!("paused") } else { serde_json::to_value(state.status).unwrap_or(Value::Null) },
            "Running": state.status == Status::Running,
            "Paused": paused,
            "Restarting": state.status == Status::Restarting,
            "OOMKilled": state.oom_killed,
            "Dead": false,
            // The container's PID 1 as the host sees it (Docker's State.Pid); the supervisor's
            // pid until the container has started.
            "Pid": if state.status == Status::Running {
                kiln_runtime::container_pid(&record.id).unwrap_or(state.pid)
            } else {
                0
            },
            "ExitCode": state.exit_code,
            "Error": "",
            "StartedAt": state.started_at.clone().unwrap_or_else(|| "0001-01-01T00:00:00Z".to_string()),
            "FinishedAt": state.finished_at.clone().unwrap_or_else(|| "0001-01-01T00:00:00Z".to_string()),
        },
        "Image": record.image.to_string(),
        "Name": format!("/{}", record.name),
        "RestartCount": state.restart_count,
        "Driver": "overlay",
        "Mounts": volume::mounts_json(&config.mounts),
        "Config": {
            "Hostname": if config.hostname.is_empty() { record.short_id().to_string() } else { config.hostname.clone() },
            "User": config.user,
            "Env": config.env,
            "Cmd": args,
            "Entrypoint": [path],
            "Image": config.image_name,
            "WorkingDir": config.working_dir,
            "Labels": config.labels,
        },
        "HostConfig": {
            "NetworkMode": config.network,
            "AutoRemove": config.auto_remove,
            "ReadonlyRootfs": config.read_only,
        },
        "GraphDriver": {
            "Name": "overlay",
            "Data": {
                "UpperDir": store.container_dir(&record.id).join("upper").display().to_string(),
                "WorkDir": store.container_dir(&record.id).join("work").display().to_string(),
            },
        },
    });
    if let Some(host) = inspect["HostConfig"].as_object_mut() {
        host.extend(volume::host_config_json(config));
    }
    inspect
}

/// Runs `each` on every named container, reporting failures as Docker does (`Error response
/// from daemon: ...`, exit 1) and going on with the next.
fn for_each_container(
    global: &Global,
    names: &[String],
    each: &dyn Fn(&Store, &ContainerRecord, &str) -> Result<(), String>,
) -> Exit {
    let store = match open_store(global) {
        Ok(store) => store,
        Err(exit) => return exit,
    };
    let mut exit = Exit::Success;
    for name in names {
        let result = store
            .container(name)
            .map_err(|error| error.to_string())
            .and_then(|record| each(&store, &record, name));
        if let Err(message) = result {
            output::err(&format!("Error response from daemon: {message}\n"));
            exit = Exit::Failure;
        }
    }
    exit
}

#[derive(Debug, clap::Args)]
pub struct StartArgs {
    /// Attach STDOUT/STDERR and forward signals
    #[arg(short = 'a', long)]
    pub(crate) attach: bool,
    /// Attach container's STDIN
    #[arg(short = 'i', long)]
    pub(crate) interactive: bool,
    /// Override the key sequence for detaching a container
    #[arg(long = "detach-keys", value_name = "KEYS")]
    pub(crate) detach_keys: Option<String>,
    /// Containers to start
    #[arg(required = true)]
    pub(crate) containers: Vec<String>,
}

/// Starts exited or created containers again, detached, with the spec and upper directory of
/// their first run. A running container is left alone (as Docker does).
pub fn start(global: &Global, args: StartArgs) -> Exit {
    if args.attach || args.interactive {
        return super::attach::start_attached(global, &args);
    }
    let program = match std::env::current_exe() {
        Ok(program) => program,
        Err(error) => return output::error(format!("cannot find the kiln binary: {error}")),
    };
    for_each_container(global, &args.containers, &|store, record, name| {
        if current_state(store, record).status != Status::Running {
            // A start by hand undoes a stop by hand (the restart policy applies again).
            let _ = store.set_container_stopped_by_hand(&record.id, false);
            start_monitor(store, &record.id, &program).map_err(|failure| failure.message)?;
        }
        output::out(&format!("{name}\n"));
        Ok(())
    })
}

#[derive(Debug, clap::Args)]
pub struct StopArgs {
    /// Seconds to wait before killing the container [default: the container's
    /// --stop-timeout, else 10; -1 waits forever]
    #[arg(short = 't', long = "time", allow_hyphen_values = true)]
    time: Option<i64>,
    /// Containers to stop
    #[arg(required = true)]
    containers: Vec<String>,
}

/// The signal that stops a container: its `--stop-signal` (which `create` takes from the
/// image's `StopSignal`), else the image's `StopSignal`, else SIGTERM.
fn stop_signal(store: &Store, record: &ContainerRecord) -> i32 {
    store
        .container_supervision(&record.id)
        .ok()
        .and_then(|supervision| supervision.stop_signal)
        .or_else(|| {
            store
                .blobs()
                .read(&record.image)
                .ok()
                .and_then(|bytes| serde_json::from_slice::<ImageConfig>(&bytes).ok())
                .and_then(|config| config.config.stop_signal)
        })
        .and_then(|name| kiln_runtime::parse_signal(&name))
        .unwrap_or(libc_signal::SIGTERM)
}

/// Signal numbers kiln's own commands use (Linux numbering).
mod libc_signal {
    pub const SIGKILL: i32 = 9;
    pub const SIGTERM: i32 = 15;
}

/// Docker's `stop`: the stop signal, up to `-t` seconds for the container to end, then SIGKILL.
/// Returns when the container's supervisor has recorded the exit.
pub fn stop(global: &Global, args: StopArgs) -> Exit {
    for_each_container(global, &args.containers, &|store, record, name| {
        stop_container(store, record, name, args.time)?;
        output::out(&format!("{name}\n"));
        Ok(())
    })
}

/// Stops one container as `stop` does: marks it stopped by hand (so its restart policy does
/// not bring it back), sends the stop signal, waits `time` seconds (default: the container's
/// `--stop-timeout`, else 10; negative: forever), then SIGKILL. A container waiting to be
/// restarted just ends. Returns once its supervisor has recorded the exit.
pub(crate) fn stop_container(
    store: &Store,
    record: &ContainerRecord,
    name: &str,
    time: Option<i64>,
) -> Result<(), String> {
    let seconds = time
        .or_else(|| {
            store
                .container_supervision(&record.id)
                .ok()
                .and_then(|supervision| supervision.stop_timeout)
        })
        .unwrap_or(10);
    let timeout = u64::try_from(seconds)
        .ok()
        .map(std::time::Duration::from_secs);
    let state = current_state(store, record);
    if matches!(state.status, Status::Running | Status::Restarting) {
        store
            .set_container_stopped_by_hand(&record.id, true)
            .map_err(|error| format!("cannot stop container: {name}: {error}"))?;
    }
    if state.status == Status::Restarting {
        kiln_runtime::wait_for_exit(supervisor(&state), Some(std::time::Duration::from_secs(10)));
    }
    if state.status == Status::Running {
        {
            let pid = supervisor(&state);
            let signalled = kiln_runtime::signal_container(&record.id, stop_signal(store, record))
                .map_err(|errno| format!("cannot stop container: {name}: {errno}"))?;
            if !signalled || !kiln_runtime::wait_for_exit(pid, timeout) {
                let _ = kiln_runtime::signal_container(&record.id, libc_signal::SIGKILL);
                // The supervisor records the exit as soon as PID 1 is gone; a bound anyway,
                // so a wedged supervisor cannot hang `stop`.
                if !kiln_runtime::wait_for_exit(pid, Some(std::time::Duration::from_secs(10))) {
                    return Err(format!("cannot stop container: {name}: it did not exit"));
                }
            }
        }
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct KillArgs {
    /// Signal to send to the container
    #[arg(short = 's', long = "signal", default_value = "KILL")]
    signal: String,
    /// Containers to kill
    #[arg(required = true)]
    containers: Vec<String>,
}

/// Docker's `kill`: sends the signal to the container's PID 1 and returns at once.
pub fn kill(global: &Global, args: KillArgs) -> Exit {
    let Some(signal) = kiln_runtime::parse_signal(&args.signal) else {
        return output::error(format!("invalid signal: {}", args.signal));
    };
    for_each_container(global, &args.containers, &|store, record, name| {
        let not_running = || {
            format!(
                "cannot kill container: {name}: container {} is not running",
                record.id
            )
        };
        if current_state(store, record).status != Status::Running {
            return Err(not_running());
        }
        match kiln_runtime::signal_container(&record.id, signal) {
            Ok(true) => {
                output::out(&format!("{name}\n"));
                Ok(())
            }
            Ok(false) => Err(not_running()),
            Err(errno) => Err(format!("cannot kill container: {name}: {errno}")),
        }
    })
}

#[derive(Debug, clap::Args)]
pub struct WaitArgs {
    /// Containers to wait for
    #[arg(required = true)]
    containers: Vec<String>,
}

/// Docker's `wait`: blocks until each container has exited and prints its exit code.
pub fn wait(global: &Global, args: WaitArgs) -> Exit {
    for_each_container(global, &args.containers, &|store, record, _| {
        let state = current_state(store, record);
        if matches!(state.status, Status::Running | Status::Restarting) {
            kiln_runtime::wait_for_exit(supervisor(&state), None);
        }
        let code = match store.container(&record.id) {
            Ok(after) => current_state(store, &after).exit_code,
            // Removed on exit (`--rm`): the code went with the record.
            Err(_) => 0,
        };
        output::out(&format!("{code}\n"));
        Ok(())
    })
}

#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// Follow log output (until the container exits)
    #[arg(short = 'f', long)]
    follow: bool,
    /// Show timestamps
    #[arg(short = 't', long)]
    timestamps: bool,
    /// Number of lines to show from the end of the logs, or "all"
    #[arg(short = 'n', long, default_value = "all")]
    tail: String,
    /// Show logs since a timestamp (RFC 3339 or Unix seconds) or a relative time (42m)
    #[arg(long)]
    since: Option<String>,
    /// Show logs before a timestamp (RFC 3339 or Unix seconds) or a relative time (42m)
    #[arg(long)]
    until: Option<String>,
    /// The container
    container: String,
}

/// `--since`/`--until`: RFC 3339, Unix seconds (with fraction), or a duration before now
/// (`10s`, `5m`, `2h`, as Go's `time.ParseDuration` for these units).
fn log_time(text: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    if let Some(time) = human::parse_time(text) {
        return Some(time);
    }
    if let Ok(seconds) = text.parse::<f64>() {
        return chrono::DateTime::from_timestamp_millis((seconds * 1000.0) as i64);
    }
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let seconds = match unit {
        "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return None,
    };
    Some(chrono::Utc::now() - chrono::Duration::milliseconds((seconds * 1000.0) as i64))
}

/// Prints log entries: stdout entries to stdout, stderr entries to stderr.
fn print_entries(entries: &[LogEntry], timestamps: bool) {
    for entry in entries {
        let text = if timestamps {
            format!("{} {}", entry.time, entry.log)
        } else {
            entry.log.clone()
        };
        match entry.stream {
            LogStream::Stdout => output::out(&text),
            LogStream::Stderr => output::err(&text),
        }
    }
}

/// Docker's `logs` for the json-file driver. `-f` follows the file until the container's
/// supervisor has exited: it re-reads the file every 100 ms (a timed wait on the supervisor's
/// pidfd, so the end is seen at once; inotify on the log would make new lines appear without
/// the 100 ms delay) and stops after a last read once the supervisor is gone.
pub fn logs(global: &Global, args: LogsArgs) -> Exit {
    let tail = match args.tail.as_str() {
        "all" => None,
        number => match number.parse::<i64>() {
            Ok(number) if number < 0 => None,
            Ok(number) => Some(number as usize),
            Err(_) => return output::error(format!("invalid --tail value: {number}")),
        },
    };
    let mut bounds = [None, None];
    for (bound, text) in bounds.iter_mut().zip([&args.since, &args.until]) {
        if let Some(text) = text {
            match log_time(text) {
                Some(time) => *bound = Some(time),
                None => return output::error(format!("invalid time: {text}")),
            }
        }
    }
    let [since, until] = bounds;
    let keep = |entry: &LogEntry| {
        let time = human::parse_time(&entry.time);
        since.is_none_or(|since| time.is_some_and(|time| time >= since))
            && until.is_none_or(|until| time.is_some_and(|time| time <= until))
    };
    let store = match open_store(global) {
        Ok(store) => store,
        Err(exit) => return exit,
    };
    let record = match store.container(&args.container) {
        Ok(record) => record,
        Err(error) => return output::error_of(&error),
    };
    let path = store.container_log_path(&record.id);
    let mut reader = LogReader::default();
    let mut entries: Vec<LogEntry> = reader.read(&path).into_iter().filter(keep).collect();
    if let Some(tail) = tail {
        entries.drain(..entries.len().saturating_sub(tail));
    }
    print_entries(&entries, args.timestamps);
    if !args.follow {
        return Exit::Success;
    }
    loop {
        let state = match store.container(&record.id) {
            Ok(record) => current_state(&store, &record),
            Err(_) => ContainerState::default(),
        };
        let running = state.status == Status::Running;
        let new: Vec<LogEntry> = reader.read(&path).into_iter().filter(keep).collect();
        print_entries(&new, args.timestamps);
        if !running || until.is_some_and(|until| chrono::Utc::now() > until) {
            return Exit::Success;
        }
        // Wakes at once when the supervisor exits; otherwise re-reads the log every 100 ms.
        kiln_runtime::wait_for_exit(
            supervisor(&state),
            Some(std::time::Duration::from_millis(100)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_values_match_as_dockers_regular_expressions_do_in_practice() {
        assert!(docker_match("web", "/my-web-1"));
        assert!(docker_match("^/web$", "/web"));
        assert!(!docker_match("^/web$", "/web2"));
        assert!(docker_match("^/we", "/web2"));
        assert!(docker_match("b2$", "/web2"));
        assert!(!docker_match("^web", "/web"));
    }

    #[test]
    fn ps_filters_are_checked_as_docker_checks_them() {
        let parse = |filters: &[&str]| {
            PsFilter::parse(
                &filters
                    .iter()
                    .map(|text| text.to_string())
                    .collect::<Vec<_>>(),
            )
        };
        let filter = parse(&["health=healthy", "status=exited", "exited=3"]).unwrap();
        assert_eq!(filter.health, ["healthy"]);
        assert!(filter.shows_all());
        assert_eq!(filter.exited, [3]);
        assert_eq!(
            parse(&["health=sick"]).unwrap_err(),
            "Unrecognised filter value for health: sick"
        );
        assert_eq!(
            parse(&["status=up"]).unwrap_err(),
            "Invalid filter 'status=up'"
        );
        assert_eq!(
            parse(&["colour=red"]).unwrap_err(),
            "invalid filter 'colour'"
        );
        assert!(parse(&["health"]).is_err());
        assert!(!parse(&["name=x"]).unwrap().shows_all());
    }
}
