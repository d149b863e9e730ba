//! `kiln save` and `kiln load`: image archives to and from files, pipes and OCI layouts.

use std::fs;
use std::io::{self, BufWriter, IsTerminal as _};
use std::path::{Path, PathBuf};

use kiln_cache::archive::{self, LoadOptions, LoadedImage, SavePlan};
use kiln_cache::store::Store;

use super::{Global, open_store};
use crate::{Exit, output};

#[derive(Debug, clap::Args)]
pub struct SaveArgs {
    /// Write to a file, instead of STDOUT
    #[arg(short = 'o', long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Images to save: name (every tag of it), name:tag or ID
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<String>,
}

pub fn save(global: &Global, args: SaveArgs) -> Exit {
    let to_terminal = args.output.is_none() && io::stdout().is_terminal();
    if to_terminal {
        return output::error(
            "cowardly refusing to save to a terminal. Use the -o flag or redirect",
        );
    }
    let store = match open_store(global) {
        Ok(store) => store,
        Err(exit) => return exit,
    };
    // Everything is resolved before the first byte is written or the file is created.
    let plan = match archive::plan_save(&store, &args.images) {
        Ok(plan) => plan,
        Err(error) => return output::error_of(&error),
    };
    let written = match &args.output {
        Some(path) => save_to_file(&store, &plan, path),
        None => {
            let mut stdout = output::stdout_stream();
            plan.write(&store, &mut stdout)
                .map_err(|error| output::error_of(&error))
        }
    };
    match written {
        Ok(_) => Exit::Success,
        Err(exit) => exit,
    }
}

/// Writes to a temporary file next to `path` and renames it into place, as the docker CLI does,
/// so that a failed save leaves no partial archive behind.
fn save_to_file(store: &Store, plan: &SavePlan, path: &Path) -> Result<u64, Exit> {
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        Some(_) | None => PathBuf::from("."),
    };
    let temp = directory.join(format!(".kiln_temp_{}", std::process::id()));
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temp)
        .map_err(|error| output::error(format!("{}: {error}", temp.display())))?;
    let mut writer = BufWriter::with_capacity(1 << 20, file);
    let written = plan
        .write(store, &mut writer)
        .map_err(|error| output::error_of(&error))
        .and_then(|written| {
            let file = writer
                .into_inner()
                .map_err(|error| output::error(format!("{}: {}", temp.display(), error.error())))?;
            file.sync_all()
                .and_then(|()| fs::rename(&temp, path))
                .map_err(|error| output::error(format!("{}: {error}", path.display())))?;
            Ok(written)
        });
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written
}

#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// Read from a tar archive file (or an OCI layout directory), instead of STDIN
    #[arg(short = 'i', long, value_name = "FILE")]
    input: Option<PathBuf>,
    /// Suppress the load output
    #[arg(short = 'q', long)]
    quiet: bool,
}

pub fn load(global: &Global, args: LoadArgs) -> Exit {
    if args.input.is_none() && io::stdin().is_terminal() {
        return output::error("requested load from stdin, but stdin is empty");
    }
    let mut store = match open_store(global) {
        Ok(store) => store,
        Err(exit) => return exit,
    };
    // Layers that come uncompressed are stored as they come: loading is then as fast as
    // unpacking (gzip at level 6 is the bottleneck otherwise), and the image keeps its manifest
    // and blob digests exactly. gzip and zstd layers are always kept as they are.
    let options = LoadOptions {
        plain_layers: kiln_cache::layer::Compression::None,
    };
    let loaded = match &args.input {
        None => archive::load(&mut store, io::stdin().lock(), &options),
        Some(path) if path.is_dir() => archive::load_layout(&mut store, path, &options),
        Some(path) => match fs::File::open(path) {
            Ok(file) => archive::load(&mut store, io::BufReader::new(file), &options),
            Err(error) => return output::error(format!("{}: {error}", path.display())),
        },
    };
    match loaded {
        Ok(images) => {
            if !args.quiet {
                output::out(&report(&images));
            }
            Exit::Success
        }
        Err(error) => output::error_of(&error),
    }
}

/// Docker's lines: one `Loaded image: name:tag` per tag, `Loaded image ID: sha256:...` for an
/// image without tags, and a notice for each tag taken from another image.
fn report(images: &[LoadedImage]) -> String {
    let mut text = String::new();
    for image in images {
        for (tag, before) in &image.replaced {
            text.push_str(&format!(
                "The image {} already exists, renaming the old one with ID {before} to empty string\n",
                tag.familiar()
            ));
        }
        if image.tags.is_empty() {
            text.push_str(&format!("Loaded image ID: {}\n", image.id));
        }
        for tag in &image.tags {
            text.push_str(&format!("Loaded image: {}\n", tag.familiar()));
        }
    }
    text
}
