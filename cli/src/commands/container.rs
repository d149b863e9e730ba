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
use kiln_cache::digest::Digest;
use kiln_cache::image::ImageConfig;
use kiln_cache::reference::Reference;
use kiln_cache::store::Store;
use kiln_registry::{PullOptions, PullPolicy};
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
    /// Pull image before running: always, missing (when the store has no such image) or never
    #[arg(long, default_value = "missing", value_name = "POLICY")]
    pull: String,
    #[command(flatten)]
    supervision: super::attach::SupervisionArgs,
    /// The image, then the command and its arguments (they replace the image's CMD). One
    /// positional so that everything after the image goes to the container untouched, as
    /// with Docker (`kiln run IMAGE -c x` passes `-c x`; flags go before the image)
    #[arg(required = true, value_names = ["IMAGE", "COMMAND"], num_args = 1..)]
    image_and_command: Vec<String>,
}

impl RunArgs {
    /// The image named on the command line.
    fn image(&self) -> &str {
        &self.image_and_command[0]
    }

    /// The command and arguments after the image (empty: the image's default).
    fn command(&self) -> &[String] {
        &self.image_and_command[1..]
    }
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
            "-p/--publish is not supported yet: bridge network (port publishing) is a later \
             kiln feature; with --network host the container's ports are the host's"
                .into(),
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
    let policy = match args.pull.as_str() {
        "always" => PullPolicy::Always,
        "missing" => PullPolicy::Missing,
        "never" => PullPolicy::Never,
        other => {
            return output::error(format!(
                "invalid pull option: '{other}': must be one of \"always\", \"missing\" or \"never\""
            ));
        }
    };
    let mut store = match open_store(global) {
        Ok(store) => store,
        Err(exit) => return exit,
    };
    let image = match image_for_run(global, &mut store, args.image(), policy)
        .and_then(|id| store.image(&id).map_err(|error| output::error_of(&error)))
    {
        Ok(image) => image,
        Err(exit) => return exit,
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
        image_name: args.image().to_string(),
        args: args.command().to_vec(),
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
    let (entrypoint, cmd) =
        entrypoint_and_cmd(&image_config, args.entrypoint.as_deref(), args.command());
    config.entrypoint = Some(entrypoint);
    config.cmd = Some(cmd);
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
        supervisor_start: crate::monitor::own_start_time(),
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

/// The image `name` names for `run`/`create`, pulled first as `policy` says, with Docker's
/// lines on stderr (stdout is the container's): `Unable to find image 'busybox:latest'
/// locally`, the pull's progress, then `Digest:` and `Status:`. A missing image with
/// `--pull never` is Docker's `No such image: busybox:latest`. Errors are reported here.
fn image_for_run(
    global: &Global,
    store: &mut Store,
    name: &str,
    policy: PullPolicy,
) -> Result<Digest, Exit> {
    let stored = store.resolve(name);
    if policy != PullPolicy::Always
        && let Ok(id) = stored
    {
        return Ok(id);
    }
    let Ok(reference) = Reference::parse(name).map(Reference::with_default_tag) else {
        // Neither stored nor a valid reference: nothing to pull.
        return Err(output::error(format!("No such image: {name}")));
    };
    if policy == PullPolicy::Never {
        return Err(output::error(format!(
            "No such image: {}",
            reference.familiar()
        )));
    }
    if stored.is_err() {
        output::err(&format!(
            "Unable to find image '{}' locally\n",
            reference.familiar()
        ));
    }
    let id = kiln_registry::ensure_image(
        store,
        name,
        policy,
        &super::registry::client_options(global),
        &PullOptions::default(),
        &super::registry::PULL_LINES_TO_STDERR,
    )
    .map_err(|error| output::error_of(&error))?;
    // Docker ends a pull with the manifest digest the tag resolved to and a status line.
    let repository = format!("{}@", reference.name());
    if let Some(digest) = store.image(&id).ok().and_then(|image| {
        image
            .digests
            .iter()
            .find_map(|digest| digest.strip_prefix(&repository).map(str::to_string))
    }) {
        output::err(&format!("Digest: {digest}\n"));
    }
    // `--pull always` that finds the stored image current downloads nothing.
    let status = if stored.is_ok_and(|before| before == id) {
        "Image is up to date for"
    } else {
        "Downloaded newer image for"
    };
    output::err(&format!("Status: {status} {}\n", reference.familiar()));
    Ok(id)
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
/// any more: its init died with it (parent-death signal). Such stale state (the supervisor was
/// killed with SIGKILL, so it could not clean up) is repaired here, as Docker's daemon would
/// have done at the exit: the container is recorded as exited with 137, its cgroup is removed,
/// and a `--rm` container is removed with its anonymous volumes (callers listing containers
/// skip it: see [`removed`]).
pub(crate) fn current_state(store: &Store, record: &ContainerRecord) -> ContainerState {
    let state = record.state.clone();
    if !matches!(state.status, Status::Running | Status::Restarting)
        || kiln_runtime::process_alive_since(supervisor(&state), state.supervisor_start)
    {
        return state;
    }
    // The supervisor is gone, so it writes no more: read the record again, since it may have
    // recorded the real exit between our first read and its end.
    let latest = match store.container(&record.id) {
        Ok(latest) => latest.state,
        Err(_) => {
            return ContainerState {
                status: Status::Exited,
                ..state
            };
        }
    };
    if !matches!(latest.status, Status::Running | Status::Restarting) {
        return latest;
    }
    let state = ContainerState {
        status: Status::Exited,
        exit_code: 137,
        finished_at: Some(kiln_cache::import::creation_time()),
        ..latest
    };
    let _ = kiln_runtime::remove_cgroup(&record.id);
    if record.config.auto_remove {
        if store.remove_container(&record.id).is_ok() {
            let _ = store.remove_anonymous_volumes(&record.config.mounts);
        }
    } else {
        let _ = store.set_container_state(&record.id, &state);
    }
    state
}

/// Whether `record` is gone from the store: a `--rm` container whose stale state
/// [`current_state`] just repaired by removing it.
fn removed(store: &Store, record: &ContainerRecord) -> bool {
    record.config.auto_remove && store.container(&record.id).is_err()
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
    /// Display total file sizes (the container's writable layer, and with its image)
    #[arg(short = 's', long)]
    size: bool,
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
    // Docker computes sizes for `-s`, and for a format that shows them.
    let with_size = args.size
        || args
            .format
            .as_deref()
            .is_some_and(|format| format.contains(".Size"));
    let show_all = args.all || limit.is_some() || filter.shows_all();
    let rows: Vec<Value> = containers
        .iter()
        .map(|record| (record, current_state(&store, record)))
        .filter(|(record, _)| !removed(&store, record))
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
            let trunc = |text: &str, width: usize| {
                if args.no_trunc {
                    text.to_string()
                } else {
                    ellipsis(text, width)
                }
            };
            let paused = paused(&record.id, &state);
            let mounts: Vec<String> = record
                .config
                .mounts
                .iter()
                .map(|mount| {
                    let name = if mount.name.is_empty() { &mount.source } else { &mount.name };
                    trunc(name, 15)
                })
                .collect();
            let local_volumes = record
                .config
                .mounts
                .iter()
                .filter(|mount| mount.kind == kiln_cache::volume::MountKind::Volume)
                .count();
            let size = if with_size {
                let writable = upper_size(&store.container_dir(&record.id).join("upper"));
                let image = store.image(&record.image).map_or(0, |image| image.size);
                format!(
                    "{} (virtual {})",
                    human::size(writable),
                    human::size(writable + image)
                )
            } else {
                "0B".to_string()
            };
            json!({
                "ID": if args.no_trunc { record.id.clone() } else { record.short_id().to_string() },
                "Image": record.config.image_name,
                "Command": go_quote(&trunc(&docker_command(&record.config.args), 20)),
                "CreatedAt": go_time(&record.created),
                "RunningFor": human::since(Some(&record.created)),
                "Status": if paused { format!("{} (Paused)", status_text(&state)) } else { status_text(&state) },
                "State": if paused { json!("paused") } else { serde_json::to_value(state.status).unwrap_or(Value::Null) },
                "Ports": "",
                "Names": record.name,
                "Labels": record.config.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","),
                "Networks": record.config.network,
                "Mounts": mounts.join(","),
                "LocalVolumes": local_volumes.to_string(),
                "Size": size,
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
    let default_format = if args.size {
        "table {{.ID}}\t{{.Image}}\t{{.Command}}\t{{.RunningFor}}\t{{.Status}}\t{{.Ports}}\t{{.Names}}\t{{.Size}}"
    } else {
        "table {{.ID}}\t{{.Image}}\t{{.Command}}\t{{.RunningFor}}\t{{.Status}}\t{{.Ports}}\t{{.Names}}"
    };
    render(args.format.as_deref(), default_format, &rows, &|field| {
        Some(
            match field {
                "ID" => "CONTAINER ID",
                "RunningFor" => "CREATED",
                "CreatedAt" => "CREATED AT",
                other => return Some(other.to_ascii_uppercase()),
            }
            .to_string(),
        )
    })
}

/// The daemon's `Command` of a container (moby `daemon/list.go`): the path, then the
/// arguments, each one holding a space wrapped in single quotes (`sh -c 'exit 3'`).
fn docker_command(args: &[String]) -> String {
    args.iter()
        .enumerate()
        .map(|(index, arg)| {
            if index > 0 && arg.contains(' ') {
                format!("'{arg}'")
            } else {
                arg.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The docker CLI's `Ellipsis`: at most `width` characters, the last one `…` when cut.
fn ellipsis(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// Go's `strconv.Quote` for the text kiln shows: double quotes, `"` and `\` escaped, control
/// characters as escapes; other characters (`…` too) as they are.
fn go_quote(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for character in text.chars() {
        match character {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            '\n' => quoted.push_str("\\n"),
            '\t' => quoted.push_str("\\t"),
            '\r' => quoted.push_str("\\r"),
            control if (control as u32) < 0x20 || control as u32 == 0x7f => {
                quoted.push_str(&format!("\\x{:02x}", control as u32));
            }
            other => quoted.push(other),
        }
    }
    quoted.push('"');
    quoted
}

/// A stored RFC 3339 time as Go's `time.Time.String()` prints it in UTC, which `ps`'s
/// `CreatedAt` shows: `2026-11-26 15:44:11 +0000 UTC`.
fn go_time(text: &str) -> String {
    human::parse_time(text).map_or_else(
        || text.to_string(),
        |time| time.format("%Y-%m-%d %H:%M:%S +0000 UTC").to_string(),
    )
}

/// The size of a writable layer as Docker counts it (`directory.Size`): the sizes of the
/// files, symlinks and other non-directories below `dir`, each inode once. The runtime's
/// empty mount targets and whiteouts weigh nothing.
fn upper_size(dir: &Path) -> u64 {
    fn walk(dir: &Path, seen: &mut std::collections::HashSet<u64>) -> u64 {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        let mut total = 0;
        for entry in entries.flatten() {
            let Ok(metadata) = entry.path().symlink_metadata() else {
                continue;
            };
            if metadata.is_dir() {
                total += walk(&entry.path(), seen);
            } else if metadata.len() > 0
                && seen.insert(std::os::unix::fs::MetadataExt::ino(&metadata))
            {
                total += metadata.len();
            }
        }
        total
    }
    walk(dir, &mut std::collections::HashSet::new())
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
            if removed(&store, &record) {
                // A `--rm` container whose CLI was killed: the repair just removed it.
                return Ok(Ok(()));
            }
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

/// A list as Docker's inspect shows it: `null` when empty.
fn null_if_empty(list: &[String]) -> Value {
    if list.is_empty() {
        Value::Null
    } else {
        json!(list)
    }
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
        "Platform": "linux",
        "LogPath": store.container_log_path(&record.id).display().to_string(),
        // The files the runtime bind-mounts over the image's /etc ones.
        "ResolvConfPath": store.container_dir(&record.id).join("resolv.conf").display().to_string(),
        "HostnamePath": store.container_dir(&record.id).join("hostname").display().to_string(),
        "HostsPath": store.container_dir(&record.id).join("hosts").display().to_string(),
        "Mounts": volume::mounts_json(&config.mounts),
        "Config": {
            "Hostname": if config.hostname.is_empty() { record.short_id().to_string() } else { config.hostname.clone() },
            "User": config.user,
            "Env": config.env,
            // Records made before kiln kept these: the command as a whole.
            "Cmd": null_if_empty(config.cmd.as_ref().unwrap_or(&config.args)),
            "Entrypoint": null_if_empty(config.entrypoint.as_deref().unwrap_or_default()),
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
        if let Some(spec) = saved_spec(store, &record.id) {
            host.extend(limits_json(&spec));
        }
    }
    inspect
}

/// The sandbox spec `run`/`create` saved for the container, if it can be read.
fn saved_spec(store: &Store, id: &str) -> Option<Spec> {
    let bytes = std::fs::read(store.container_dir(id).join(SPEC_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Docker's `HostConfig` limit and security fields, from the saved spec: 0, `null` or `false`
/// where nothing was asked for, as Docker shows them. `MemorySwap` is Docker's default of
/// twice `Memory` when only `-m` was given.
fn limits_json(spec: &Spec) -> serde_json::Map<String, Value> {
    let resources = &spec.resources;
    let memory = resources.memory.unwrap_or(0);
    let memory_swap = match (resources.memory_swap, resources.memory) {
        (Some(swap), _) => swap,
        (None, Some(memory)) => i64::try_from(memory).unwrap_or(i64::MAX).saturating_mul(2),
        (None, None) => 0,
    };
    // Docker shows capabilities with their `CAP_` prefix, whichever way they were given.
    let capabilities = |list: &[String]| {
        let named: Vec<String> = list
            .iter()
            .map(|name| {
                let upper = name.to_ascii_uppercase();
                if upper == "ALL" || upper.starts_with("CAP_") {
                    upper
                } else {
                    format!("CAP_{upper}")
                }
            })
            .collect();
        null_if_empty(&named)
    };
    let mut security = Vec::new();
    match &spec.seccomp {
        Seccomp::Default => {}
        Seccomp::Unconfined => security.push("seccomp=unconfined".to_string()),
        // Docker shows the profile's JSON itself after `seccomp=`.
        Seccomp::Profile(profile) => security.push(format!("seccomp={profile}")),
    }
    if spec.no_new_privileges {
        security.push("no-new-privileges".to_string());
    }
    let ulimits: Vec<Value> = spec
        .ulimits
        .iter()
        .map(|ulimit| {
            let limit = |value: u64| i64::try_from(value).unwrap_or(-1);
            json!({
                "Name": serde_json::to_value(ulimit.name).unwrap_or(Value::Null),
                "Soft": limit(ulimit.soft),
                "Hard": limit(ulimit.hard),
            })
        })
        .collect();
    let mut host = serde_json::Map::new();
    host.insert("Memory".into(), json!(memory));
    host.insert("MemorySwap".into(), json!(memory_swap));
    host.insert(
        "NanoCpus".into(),
        json!(resources.cpus.map_or(0, |cpus| (cpus * 1e9).round() as i64)),
    );
    host.insert("CpuShares".into(), json!(resources.cpu_shares.unwrap_or(0)));
    host.insert(
        "CpusetCpus".into(),
        json!(resources.cpuset_cpus.clone().unwrap_or_default()),
    );
    host.insert("PidsLimit".into(), json!(resources.pids_limit));
    host.insert("Ulimits".into(), json!(ulimits));
    host.insert("CapAdd".into(), capabilities(&spec.cap_add));
    host.insert("CapDrop".into(), capabilities(&spec.cap_drop));
    host.insert("Privileged".into(), json!(spec.privileged));
    host.insert("SecurityOpt".into(), null_if_empty(&security));
    host
}

/// Docker's `Config.Entrypoint` and `Config.Cmd` of a container (see [`ContainerConfig`]'s
/// fields): the image's ENTRYPOINT unless `--entrypoint` replaced it, which also drops the
/// image's CMD; the arguments after the image, else the image's CMD. Empty means none.
fn entrypoint_and_cmd(
    image: &ImageConfig,
    entrypoint_flag: Option<&str>,
    args: &[String],
) -> (Vec<String>, Vec<String>) {
    let entrypoint = match entrypoint_flag {
        Some("") => Vec::new(),
        Some(flag) => vec![flag.to_string()],
        None => image.config.entrypoint.clone().unwrap_or_default(),
    };
    let cmd = if !args.is_empty() {
        args.to_vec()
    } else if entrypoint_flag.is_some() {
        Vec::new()
    } else {
        image.config.cmd.clone().unwrap_or_default()
    };
    (entrypoint, cmd)
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
            // A detached `--rm` container's record goes with its exit: its monitor tells
            // the code to attached clients instead.
            if record.config.auto_remove
                && state.monitor_pid != 0
                && let Some(code) = exit_code_from_monitor(store, &record.id)
            {
                output::out(&format!("{code}\n"));
                return Ok(());
            }
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

/// Attaches to a detached container's monitor with no input and the output discarded, and
/// returns the exit code it reports when the container ends; None when it cannot be reached
/// (already gone) or did not report one.
fn exit_code_from_monitor(store: &Store, id: &str) -> Option<i32> {
    let connection =
        kiln_runtime::connect_attach(&crate::monitor::attach_socket(store, id)).ok()?;
    let null = || -> Option<std::os::fd::OwnedFd> {
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .ok()
            .map(Into::into)
    };
    let options = kiln_runtime::AttachOptions {
        input: None,
        output: null()?,
        error: null()?,
        tty: false,
        detach_keys: Vec::new(),
        proxy_signals_to: None,
    };
    match kiln_runtime::attach(connection, options) {
        Ok(kiln_runtime::AttachEnd::Exited(code)) => Some(code),
        _ => None,
    }
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
    #[arg(short = 'n', long, default_value = "all", allow_hyphen_values = true)]
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

/// `--since`/`--until` as Docker's `timetypes.GetTimestamp` reads them: a Go duration before
/// now (`10s`, `1h30m`, `1.5h`, `250ms`), an RFC 3339 time with or without fraction, seconds
/// or minutes (`2026-01-02T15:04:05Z`, `2026-01-02T15:04`, `2026-01-02T15`), a date
/// (`2026-01-02`), zone-less ones in local time, or Unix seconds with a fraction.
fn log_time(text: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    use chrono::{NaiveDate, NaiveDateTime, TimeZone as _};
    if text != "0"
        && let Some(nanos) = go_duration(text)
    {
        return Some(chrono::Utc::now() - chrono::Duration::nanoseconds(nanos));
    }
    if !text.contains('-') {
        let seconds: f64 = text.parse().ok()?;
        return chrono::DateTime::from_timestamp_nanos((seconds * 1e9) as i64).into();
    }
    // With a zone (`Z`, `+01:00`, or a `-01:00` after the date): fill in what RFC 3339 needs.
    let zoned = text.contains(['z', 'Z', '+']) || text.matches('-').count() == 3;
    if zoned {
        let (local, zone) = match text.find(['z', 'Z', '+']) {
            Some(at) => text.split_at(at),
            None => text.split_at(text.rfind('-')?),
        };
        let zone = if zone.eq_ignore_ascii_case("z") {
            "+00:00"
        } else {
            zone
        };
        let full = complete_time(local)?;
        return chrono::DateTime::parse_from_rfc3339(&format!("{full}{zone}"))
            .ok()
            .map(|time| time.with_timezone(&chrono::Utc));
    }
    let naive = NaiveDateTime::parse_from_str(&complete_time(text)?, "%Y-%m-%dT%H:%M:%S%.f")
        .ok()
        .or_else(|| {
            NaiveDate::parse_from_str(text, "%Y-%m-%d")
                .ok()
                .and_then(|date| date.and_hms_opt(0, 0, 0))
        })?;
    chrono::Local
        .from_local_datetime(&naive)
        .earliest()
        .map(|time| time.with_timezone(&chrono::Utc))
}

/// A zone-less date-time (`2026-01-02`, `...T15`, `...T15:04`, `...T15:04:05.5`) with the
/// missing parts as zeros: `2026-01-02T15:04:00`.
fn complete_time(text: &str) -> Option<String> {
    let (date, time) = text.split_once('T').unwrap_or((text, "00"));
    let time = match time.matches(':').count() {
        0 => format!("{time}:00:00"),
        1 => format!("{time}:00"),
        _ => time.to_string(),
    };
    Some(format!("{date}T{time}")).filter(|_| !date.is_empty())
}

/// Go's `time.ParseDuration` in nanoseconds: signed decimal numbers with units (`ns`, `us`,
/// `µs`, `ms`, `s`, `m`, `h`), one after another (`1h30m`); `0` alone needs no unit.
fn go_duration(text: &str) -> Option<i64> {
    let (sign, mut rest) = match text.strip_prefix('-') {
        Some(rest) => (-1.0, rest),
        None => (1.0, text.strip_prefix('+').unwrap_or(text)),
    };
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total = 0.0;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_end].parse().ok()?;
        rest = &rest[number_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_end..];
        total += number * scale;
    }
    Some((sign * total) as i64)
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
    // Docker's daemon shows everything for `all`, a negative number, or a value that is not
    // a number at all.
    let tail = args
        .tail
        .parse::<i64>()
        .ok()
        .and_then(|number| usize::try_from(number).ok());
    let mut bounds = [None, None];
    for ((bound, text), flag) in bounds
        .iter_mut()
        .zip([&args.since, &args.until])
        .zip(["since", "until"])
    {
        if let Some(text) = text {
            match log_time(text) {
                Some(time) => *bound = Some(time),
                None => {
                    return output::error(format!(
                        "invalid value for \"{flag}\": failed to parse value as time or duration: {text:?}"
                    ));
                }
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
    fn log_times_are_read_as_dockers_get_timestamp_reads_them() {
        let at = |text: &str| log_time(text).map(|time| time.to_rfc3339());
        assert_eq!(
            at("2026-01-02T03:04:05Z").unwrap(),
            "2026-01-02T03:04:05+00:00"
        );
        assert_eq!(
            at("2026-01-02T03:04:05.5+01:00").unwrap(),
            "2026-01-02T02:04:05.500+00:00"
        );
        assert_eq!(
            at("2026-01-02T03:04Z").unwrap(),
            "2026-01-02T03:04:00+00:00"
        );
        assert_eq!(
            at("2026-01-02T03-02:00").unwrap(),
            "2026-01-02T05:00:00+00:00"
        );
        assert_eq!(at("1700000000.5").unwrap(), "2023-11-14T22:13:20.500+00:00");
        // Zone-less forms are local time: compare with the local reading.
        let local = |text: &str| {
            use chrono::TimeZone as _;
            chrono::Local
                .from_local_datetime(
                    &chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S").unwrap(),
                )
                .earliest()
                .unwrap()
                .with_timezone(&chrono::Utc)
        };
        assert_eq!(
            log_time("2026-01-02").unwrap(),
            local("2026-01-02T00:00:00")
        );
        assert_eq!(
            log_time("2026-01-02T03").unwrap(),
            local("2026-01-02T03:00:00")
        );
        assert_eq!(
            log_time("2026-01-02T03:04:05").unwrap(),
            local("2026-01-02T03:04:05")
        );
        for bad in ["bogus", "2026-13-01", "5x", ""] {
            assert_eq!(at(bad), None, "{bad}");
        }
        let ago = |text: &str| (chrono::Utc::now() - log_time(text).unwrap()).num_seconds();
        assert!((5399..=5401).contains(&ago("1h30m")), "{}", ago("1h30m"));
        assert!((89..=91).contains(&ago("1.5m")));
        assert_eq!(go_duration("250ms"), Some(250_000_000));
        assert_eq!(go_duration("1h"), Some(3_600_000_000_000));
        assert_eq!(go_duration("10"), None);
    }

    #[test]
    fn ps_shows_commands_as_the_docker_cli_does() {
        let args = |list: &[&str]| list.iter().map(|arg| arg.to_string()).collect::<Vec<_>>();
        assert_eq!(
            docker_command(&args(&["sh", "-c", "exit 3"])),
            "sh -c 'exit 3'"
        );
        assert_eq!(
            go_quote(&ellipsis("sh -c 'echo hello > /f'", 20)),
            "\"sh -c 'echo hello >…\""
        );
        assert_eq!(go_quote("a\"b\\c\n"), "\"a\\\"b\\\\c\\n\"");
        assert_eq!(ellipsis("short", 20), "short");
        assert_eq!(
            go_time("2026-11-26T15:44:11.027073265Z"),
            "2026-11-26 15:44:11 +0000 UTC"
        );
    }

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
