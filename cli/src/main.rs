//! `kiln`: the command-line interface.
//!
//! Argument parsing (clap), one short handler per command, all terminal output (in `output`) and
//! exit codes. No build or runtime logic lives here.

mod commands;
mod human;
mod monitor;
mod output;
mod progress;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// How a command ended. kiln's own errors exit 125, as Docker's do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Exit 0.
    Success,
    /// Exit 1: the command ran and found problems (a Dockerfile that does not parse, lint errors,
    /// an expansion that fails).
    Failure,
    /// Exit 125: kiln could not do what was asked (bad flags, unreadable files).
    Error,
    /// A container's own exit status, passed through (`kiln run`), or Docker's 126/127.
    Code(u8),
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        match exit {
            Exit::Success => ExitCode::SUCCESS,
            Exit::Failure => ExitCode::from(1),
            Exit::Error => ExitCode::from(125),
            Exit::Code(code) => ExitCode::from(code),
        }
    }
}

/// A daemonless Dockerfile build toolkit.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, about, max_term_width = 100)]
struct Cli {
    #[command(flatten)]
    global: commands::Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build an image from a Dockerfile
    Build(Box<commands::build::BuildArgs>),
    /// Manage the build cache
    #[command(subcommand)]
    Builder(commands::build::BuilderCommand),
    /// Parse and lint a Dockerfile (BuildKit's check rules)
    Check(commands::check::Args),
    /// Look inside kiln: the parser's AST, word expansion
    #[command(subcommand)]
    Debug(commands::debug::Command),
    /// List images
    Images(commands::image::ImagesArgs),
    /// Manage images
    #[command(subcommand)]
    Image(ImageCommand),
    /// Create a tag TARGET that refers to SOURCE
    Tag(commands::image::TagArgs),
    /// Remove one or more images
    Rmi(commands::image::RmiArgs),
    /// Return low-level information on images
    Inspect(commands::image::InspectArgs),
    /// Show the history of an image
    History(commands::image::HistoryArgs),
    /// Import the contents of a tarball to create a file system image
    Import(commands::image::ImportArgs),
    /// Save one or more images to a tar archive (streamed to STDOUT by default)
    Save(commands::archive::SaveArgs),
    /// Load an image from a tar archive or STDIN
    Load(commands::archive::LoadArgs),
    /// Download an image from a registry
    Pull(commands::registry::PullArgs),
    /// Upload an image to a registry
    Push(commands::registry::PushArgs),
    /// Log in to a registry
    Login(commands::registry::LoginArgs),
    /// Log out from a registry
    Logout(commands::registry::LogoutArgs),
    /// Manage the store
    #[command(subcommand)]
    System(commands::system::Command),
    /// Manage volumes
    #[command(subcommand)]
    Volume(commands::volume::Command),
    /// Create and run a new container from an image
    Run(Box<commands::container::RunArgs>),
    /// Create a new container
    Create(Box<commands::container::RunArgs>),
    /// Attach local standard input, output, and error streams to a running container
    Attach(commands::attach::AttachArgs),
    /// Restart one or more containers
    Restart(commands::attach::RestartArgs),
    /// Start one or more stopped containers (detached)
    Start(commands::container::StartArgs),
    /// Stop one or more running containers
    Stop(commands::container::StopArgs),
    /// Kill one or more running containers
    Kill(commands::container::KillArgs),
    /// Block until one or more containers stop, then print their exit codes
    Wait(commands::container::WaitArgs),
    /// Fetch the logs of a container
    Logs(commands::container::LogsArgs),
    /// List containers
    Ps(commands::container::PsArgs),
    /// Remove one or more containers
    Rm(commands::container::RmArgs),
    /// Create a new image from a container's changes
    Commit(commands::changes::CommitArgs),
    /// Inspect changes to files or directories on a container's filesystem
    Diff(commands::changes::DiffArgs),
    /// Copy files/folders between a container and the local filesystem
    Cp(commands::changes::CpArgs),
    /// Export a container's filesystem as a tar archive
    Export(commands::changes::ExportArgs),
    /// Execute a command in a running container
    Exec(commands::exec::ExecArgs),
    /// Display the running processes of a container
    Top(commands::exec::TopArgs),
    /// Pause all processes within one or more containers
    Pause(commands::exec::PauseArgs),
    /// Unpause all processes within one or more containers
    Unpause(commands::exec::PauseArgs),
    /// Display a live stream of container(s) resource usage statistics
    Stats(commands::exec::StatsArgs),
    /// Rename a container
    Rename(commands::exec::RenameArgs),
    /// Show the kiln version information
    Version(commands::version::Args),
    /// Display system-wide information
    Info(commands::version::Args),
}

#[derive(Debug, Subcommand)]
enum ImageCommand {
    /// List images
    #[command(alias = "list")]
    Ls(commands::image::ImagesArgs),
    /// Remove unused images
    Prune(commands::image::PruneArgs),
    /// Remove one or more images
    Rm(commands::image::RmiArgs),
    /// Create a tag TARGET that refers to SOURCE
    Tag(commands::image::TagArgs),
    /// Display detailed information on one or more images
    Inspect(commands::image::InspectArgs),
    /// Show the history of an image
    History(commands::image::HistoryArgs),
    /// Import the contents of a tarball to create a file system image
    Import(commands::image::ImportArgs),
    /// Save one or more images to a tar archive (streamed to STDOUT by default)
    Save(commands::archive::SaveArgs),
    /// Load an image from a tar archive or STDIN
    Load(commands::archive::LoadArgs),
}

/// The hidden first argument with which kiln re-executes itself as a container's init.
const INIT_MARKER: &str = "__kiln-init";

fn main() -> ExitCode {
    // The container init must start before anything else (no threads, no allocation-heavy
    // setup): namespaces can only be entered by a single-threaded process.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|arg| arg == INIT_MARKER)
    {
        kiln_runtime::init_main();
    }
    // The parent of an exec'd process joins a container's PID namespace: single-threaded too.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|arg| arg == commands::exec::EXEC_MARKER)
    {
        kiln_runtime::exec_main();
    }
    let mut args = std::env::args_os();
    if args
        .nth(1)
        .is_some_and(|arg| arg == monitor::MONITOR_MARKER)
    {
        return monitor::main(&args.collect::<Vec<_>>());
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return output::usage_error(&error).into(),
    };
    let global = &cli.global;
    let exit = match cli.command {
        Command::Build(args) => commands::build::run(global, *args),
        Command::Builder(command) => commands::build::builder(global, command),
        Command::Check(args) => commands::check::run(args),
        Command::Debug(command) => commands::debug::run(command),
        Command::Images(args) | Command::Image(ImageCommand::Ls(args)) => {
            commands::image::images(global, args)
        }
        Command::Tag(args) | Command::Image(ImageCommand::Tag(args)) => {
            commands::image::tag(global, args)
        }
        Command::Rmi(args) | Command::Image(ImageCommand::Rm(args)) => {
            commands::image::rmi(global, args)
        }
        Command::Inspect(args) | Command::Image(ImageCommand::Inspect(args)) => {
            commands::image::inspect(global, args)
        }
        Command::History(args) | Command::Image(ImageCommand::History(args)) => {
            commands::image::history(global, args)
        }
        Command::Import(args) | Command::Image(ImageCommand::Import(args)) => {
            commands::image::import(global, args)
        }
        Command::Save(args) | Command::Image(ImageCommand::Save(args)) => {
            commands::archive::save(global, args)
        }
        Command::Load(args) | Command::Image(ImageCommand::Load(args)) => {
            commands::archive::load(global, args)
        }
        Command::Image(ImageCommand::Prune(args)) => commands::image::prune(global, args),
        Command::Pull(args) => commands::registry::pull(global, args),
        Command::Push(args) => commands::registry::push(global, args),
        Command::Login(args) => commands::registry::login(global, args),
        Command::Logout(args) => commands::registry::logout(global, args),
        Command::System(command) => commands::system::run(global, command),
        Command::Volume(command) => commands::volume::run(global, command),
        Command::Run(args) => commands::container::run(global, *args),
        Command::Create(args) => commands::container::create(global, *args),
        Command::Attach(args) => commands::attach::attach(global, args),
        Command::Restart(args) => commands::attach::restart(global, args),
        Command::Start(args) => commands::container::start(global, args),
        Command::Stop(args) => commands::container::stop(global, args),
        Command::Kill(args) => commands::container::kill(global, args),
        Command::Wait(args) => commands::container::wait(global, args),
        Command::Logs(args) => commands::container::logs(global, args),
        Command::Ps(args) => commands::container::ps(global, args),
        Command::Rm(args) => commands::container::rm(global, args),
        Command::Commit(args) => commands::changes::commit(global, args),
        Command::Diff(args) => commands::changes::diff(global, args),
        Command::Cp(args) => commands::changes::cp(global, args),
        Command::Export(args) => commands::changes::export(global, args),
        Command::Exec(args) => commands::exec::exec(global, args),
        Command::Top(args) => commands::exec::top(global, args),
        Command::Pause(args) => commands::exec::pause(global, args),
        Command::Unpause(args) => commands::exec::unpause(global, args),
        Command::Stats(args) => commands::exec::stats(global, args),
        Command::Rename(args) => commands::exec::rename(global, args),
        Command::Version(args) => commands::version::version(args),
        Command::Info(args) => commands::version::info(global, args),
    };
    exit.into()
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
