//! Container file system commands: `diff`, `commit`, `export`, `cp`.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};

use kiln_cache::changes::{
    CommitOptions, ContainerFs, CopyOptions, CopySource, CopyTarget, commit as commit_container,
    image_config,
};
use kiln_cache::container::{ContainerRecord, Status};
use kiln_cache::reference::Reference;
use kiln_cache::store::Store;

use super::{Global, open_store};
use crate::{Exit, output};

/// Opens the store and finds a container, or reports why not.
fn container(global: &Global, name: &str) -> Result<(Store, ContainerRecord), Exit> {
    let store = open_store(global)?;
    let record = store
        .container(name)
        .map_err(|error| output::error_of(&error))?;
    Ok((store, record))
}

/// Whether the container's process is alive (its recorded runner still exists).
fn running(record: &ContainerRecord) -> bool {
    record.state.status == Status::Running
        && Path::new(&format!("/proc/{}", record.state.pid)).exists()
}

#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// The container
    container: String,
}

pub fn diff(global: &Global, args: DiffArgs) -> Exit {
    let (store, record) = match container(global, &args.container) {
        Ok(found) => found,
        Err(exit) => return exit,
    };
    let changes = ContainerFs::of(&store, &record).and_then(|fs| fs.changes());
    match changes {
        Ok(changes) => {
            let text: String = changes
                .changes
                .iter()
                .map(|change| format!("{change}\n"))
                .collect();
            output::out(&text);
            Exit::Success
        }
        Err(error) => output::error_of(&error),
    }
}

#[derive(Debug, clap::Args)]
pub struct CommitArgs {
    /// Author (e.g., "John Hannibal Smith <hannibal@a-team.com>")
    #[arg(short = 'a', long)]
    author: Option<String>,
    /// Commit message
    #[arg(short = 'm', long)]
    message: Option<String>,
    /// Apply Dockerfile instruction(s) to the created image (CMD, ENTRYPOINT, ENV, EXPOSE,
    /// LABEL, ONBUILD, USER, VOLUME, WORKDIR, STOPSIGNAL, ...)
    #[arg(short = 'c', long = "change", value_name = "INSTRUCTION")]
    changes: Vec<String>,
    /// Pause the container during commit (default true, as Docker: `--pause=false` or
    /// `-p=false` lets a running container go on writing while its changes are read)
    #[arg(
        short = 'p',
        long,
        default_value_t = true,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_name = "BOOL"
    )]
    pause: bool,
    /// The container
    container: String,
    /// The name to give the new image
    reference: Option<String>,
}

pub fn commit(global: &Global, args: CommitArgs) -> Exit {
    let reference = match args.reference.as_deref().map(Reference::parse).transpose() {
        Ok(reference) => reference,
        Err(error) => {
            return output::error(format!("{}: {error}", args.reference.unwrap_or_default()));
        }
    };
    let (mut store, record) = match container(global, &args.container) {
        Ok(found) => found,
        Err(exit) => return exit,
    };
    let mut config = None;
    if !args.changes.is_empty() {
        let mut runtime = match image_config(&store, &record.image) {
            Ok(image) => image.config,
            Err(error) => return output::error_of(&error),
        };
        for change in &args.changes {
            let dockerfile = match kiln_parser::parse(&format!("FROM scratch\n{change}\n")) {
                Ok(dockerfile) => dockerfile,
                Err(error) => return output::error(format!("invalid -c {change:?}: {error}")),
            };
            for statement in &dockerfile.statements[1..] {
                if let Err(error) = kiln_builder::config::apply(&mut runtime, statement, '\\') {
                    return output::error(format!("invalid -c {change:?}: {error}"));
                }
            }
        }
        config = Some(runtime);
    }
    let options = CommitOptions {
        author: args.author,
        message: args.message,
        config,
        reference,
        compression: kiln_cache::layer::Compression::Gzip,
        created: None,
    };
    // Docker freezes a running container while its upper dir is read, so the layer is one
    // consistent moment of it; one paused by hand stays paused.
    let freeze = args.pause
        && running(&record)
        && !kiln_runtime::container_paused(&record.id)
        && kiln_runtime::pause_container(&record.id).is_ok();
    let committed = commit_container(&mut store, &record, &options);
    if freeze {
        let _ = kiln_runtime::unpause_container(&record.id);
    }
    match committed {
        Ok(id) => {
            output::out(&format!("{id}\n"));
            Exit::Success
        }
        Err(error) => output::error_of(&error),
    }
}

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Write to a file, instead of STDOUT
    #[arg(short = 'o', long)]
    output: Option<PathBuf>,
    /// The container
    container: String,
}

pub fn export(global: &Global, args: ExportArgs) -> Exit {
    if args.output.is_none() && std::io::stdout().is_terminal() {
        return output::error(
            "cowardly refusing to save to a terminal. Use the -o flag or redirect",
        );
    }
    let (store, record) = match container(global, &args.container) {
        Ok(found) => found,
        Err(exit) => return exit,
    };
    let fs = match ContainerFs::of(&store, &record) {
        Ok(fs) => fs,
        Err(error) => return output::error_of(&error),
    };
    let result = match &args.output {
        Some(path) => match std::fs::File::create(path) {
            Ok(file) => fs.export(std::io::BufWriter::with_capacity(1 << 20, file)),
            Err(error) => return output::error(format!("{}: {error}", path.display())),
        },
        None => fs.export(output::stdout_stream()),
    };
    match result {
        Ok(()) => Exit::Success,
        Err(error) => output::error_of(&error),
    }
}

#[derive(Debug, clap::Args)]
pub struct CpArgs {
    /// Archive mode (copy all uid/gid information)
    #[arg(short = 'a', long)]
    archive: bool,
    /// Always follow symbol link in SRC_PATH
    #[arg(short = 'L', long = "follow-link")]
    follow_link: bool,
    /// CONTAINER:SRC_PATH, a local SRC_PATH, or `-` (a tar archive from STDIN)
    #[arg(value_name = "SRC_PATH")]
    source: String,
    /// CONTAINER:DEST_PATH, a local DEST_PATH, or `-` (a tar archive to STDOUT)
    #[arg(value_name = "DEST_PATH")]
    destination: String,
}

/// Docker's split of a `cp` argument: a path starting with `/` or `.`, or without `:`, is
/// local; otherwise `CONTAINER:PATH`.
fn container_path(argument: &str) -> Option<(&str, &str)> {
    if argument.starts_with('/') || argument.starts_with('.') {
        return None;
    }
    argument.split_once(':')
}

pub fn cp(global: &Global, args: CpArgs) -> Exit {
    let options = CopyOptions {
        archive: args.archive,
        follow_link: args.follow_link,
    };
    let (name, result) = match (
        container_path(&args.source),
        container_path(&args.destination),
    ) {
        (Some(_), Some(_)) => {
            return output::error("copying between containers is not supported");
        }
        (None, None) => {
            return output::error("must specify at least one container source");
        }
        (Some((name, source)), None) => {
            let (store, record) = match container(global, name) {
                Ok(found) => found,
                Err(exit) => return exit,
            };
            let target = if args.destination == "-" {
                CopyTarget::Archive(output::stdout_stream())
            } else {
                CopyTarget::Path(Path::new(&args.destination))
            };
            // A running container is read through its live root, which shows its volumes and
            // binds as Docker's cp does; a stopped one through its layers.
            let live = running(&record)
                .then(|| kiln_runtime::container_pid(&record.id))
                .flatten();
            let fs = match live {
                Some(pid) => Ok(ContainerFs::new(format!("/proc/{pid}/root"), Vec::new())),
                None => ContainerFs::of(&store, &record),
            };
            let result = fs.and_then(|fs| fs.copy_out(source, target, &options));
            (name, result)
        }
        (None, Some((name, destination))) => {
            let (store, record) = match container(global, name) {
                Ok(found) => found,
                Err(exit) => return exit,
            };
            let stdin = std::io::stdin().lock();
            let source = if args.source == "-" {
                CopySource::Archive(stdin)
            } else {
                CopySource::Path(Path::new(&args.source))
            };
            let live = running(&record)
                .then(|| kiln_runtime::container_pid(&record.id))
                .flatten();
            if let Some(pid) = live {
                return match copy_into_running(&store, &record, pid, source, destination, &options)
                {
                    Ok(()) => Exit::Success,
                    Err(message) => output::error(format!("container {name}: {message}")),
                };
            }
            let result = ContainerFs::of(&store, &record)
                .and_then(|fs| fs.copy_in(source, destination, &options));
            (name, result)
        }
    };
    match result {
        Ok(()) => Exit::Success,
        Err(error) => output::error(format!("container {name}: {}", chain(&error))),
    }
}

/// `cp` into a running container, whose overlay is mounted: its upper dir must not be written
/// behind overlayfs's back. The copy is made with Docker's rules into an empty staging upper
/// dir over the container's live root (`/proc/<pid>/root`, which shows its volumes and binds
/// too), then that staging layer is applied onto the live root through the mount, every path
/// resolved inside it (`openat2(RESOLVE_IN_ROOT)`), so what lands on a volume lands in the
/// volume as with Docker. The staging dir is in the container's directory and removed after.
fn copy_into_running<R: std::io::Read>(
    store: &Store,
    record: &ContainerRecord,
    pid: i32,
    source: CopySource<'_, R>,
    destination: &str,
    options: &CopyOptions,
) -> Result<(), String> {
    use kiln_cache::layer::{
        ApplyOptions, Compression, DeviceNodes, LayerSource, Whiteouts, WriteOptions, apply_layer,
        write_layer,
    };
    let live_root = PathBuf::from(format!("/proc/{pid}/root"));
    let staging = tempfile::Builder::new()
        .prefix("cp-running-")
        .tempdir_in(store.container_dir(&record.id))
        .map_err(|error| format!("making a staging directory: {error}"))?;
    let upper = staging.path().join("upper");
    std::fs::create_dir(&upper).map_err(|error| format!("{}: {error}", upper.display()))?;
    ContainerFs::new(&upper, vec![live_root.clone()])
        .copy_in(source, destination, options)
        .map_err(|error| chain(&error))?;
    let layer_path = staging.path().join("layer.tar");
    let layer = std::fs::File::create(&layer_path)
        .map_err(|error| format!("{}: {error}", layer_path.display()))?;
    let write = WriteOptions {
        compression: Compression::None,
        source_date_epoch: None,
    };
    write_layer(
        LayerSource::OverlayUpper(&upper),
        std::io::BufWriter::new(layer),
        &write,
    )
    .map_err(|error| chain(&error))?;
    let layer = std::fs::File::open(&layer_path)
        .map_err(|error| format!("{}: {error}", layer_path.display()))?;
    // Ownership as the staging copy has it (the container's root, or the source's with -a).
    let apply = ApplyOptions {
        whiteouts: Whiteouts::Apply,
        preserve_ownership: true,
        devices: DeviceNodes::Create,
        xattrs: true,
    };
    apply_layer(&live_root, std::io::BufReader::new(layer), &apply)
        .map(drop)
        .map_err(|error| chain(&error))
}

/// An error and its causes, `: `-separated.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
