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
    /// Pause the container during commit (kiln's containers are never running while it reads
    /// them yet; accepted for compatibility)
    #[arg(short = 'p', long)]
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
    match commit_container(&mut store, &record, &options) {
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
            let result = ContainerFs::of(&store, &record)
                .and_then(|fs| fs.copy_out(source, target, &options));
            (name, result)
        }
        (None, Some((name, destination))) => {
            let (store, record) = match container(global, name) {
                Ok(found) => found,
                Err(exit) => return exit,
            };
            if running(&record) {
                return output::error(format!(
                    "container {name} is running: copying into a running container is not supported yet"
                ));
            }
            let stdin = std::io::stdin().lock();
            let source = if args.source == "-" {
                CopySource::Archive(stdin)
            } else {
                CopySource::Path(Path::new(&args.source))
            };
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
