//! One module per command: parse arguments, call one library entry point, render.

pub mod archive;
pub mod attach;
pub mod build;
pub mod changes;
pub mod check;
pub mod container;
pub mod debug;
pub mod exec;
pub mod image;
pub mod registry;
pub mod system;
pub mod version;
pub mod volume;

use std::io::Read as _;
use std::path::{Path, PathBuf};

use kiln_cache::store::Store;

use crate::{Exit, output};

/// Options every command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct Global {
    /// The store directory [default: $KILN_ROOT, else /var/lib/kiln as root, else
    /// $XDG_DATA_HOME/kiln]
    #[arg(long, global = true, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// A registry that may be reached over plain HTTP (repeatable; loopback ones always may)
    #[arg(long = "insecure-registry", global = true, value_name = "HOST")]
    pub insecure_registry: Vec<String>,
}

/// Opens the store the options name.
pub fn open_store(global: &Global) -> Result<Store, Exit> {
    let root = global
        .root
        .clone()
        .unwrap_or_else(kiln_cache::layout::default_root);
    Store::open(&root).map_err(|error| output::error_of(&error))
}

/// The familiar form of a stored full reference (`busybox:latest`).
pub fn familiar(reference: &str) -> String {
    kiln_cache::reference::Reference::parse(reference)
        .map_or_else(|_| reference.to_string(), |parsed| parsed.familiar())
}

/// Reads a Dockerfile from a path, or from stdin for `-`. Returns the name to show in diagnostics
/// and the text.
pub fn read_dockerfile(path: &Path) -> Result<(String, String), String> {
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|error| format!("reading the Dockerfile from stdin: {error}"))?;
        return Ok(("-".to_string(), text));
    }
    let bytes =
        std::fs::read(path).map_err(|error| format!("reading {}: {error}", path.display()))?;
    let text =
        String::from_utf8(bytes).map_err(|_| format!("{} is not UTF-8 text", path.display()))?;
    Ok((path.display().to_string(), text))
}

/// Splits a `NAME=VALUE` command-line argument; a bare `NAME` takes its value from the
/// environment, as `docker build --build-arg NAME` does (None when it is unset there too).
pub fn name_value(argument: &str) -> Option<(String, String)> {
    match argument.split_once('=') {
        Some((name, value)) => Some((name.to_string(), value.to_string())),
        None => std::env::var(argument)
            .ok()
            .map(|value| (argument.to_string(), value)),
    }
}
