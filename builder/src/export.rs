//! Build exporters: where `kiln build -o|--output` puts the result, as docker buildx does.
//!
//! - `type=image` (the default): the image stays in the store and gets the `-t` tags;
//! - `type=local,dest=DIR`: the final stage's file system, files only (no image metadata);
//! - `type=tar,dest=FILE|-`: the same as one tar stream;
//! - `type=oci,dest=FILE|-` and `type=docker,dest=FILE|-`: an image archive of the result
//!   (kiln's save format, which is both an OCI layout and a Docker archive), named by `name=`
//!   or the `-t` tags. `type=docker` without `dest` loads it, which for kiln means the store.
//!
//! The shorthand `-o DIR` is `type=local,dest=DIR` and `-o -` is `type=tar,dest=-`. The image
//! is always written to the store first: its layers already live there, and the exporters
//! stream from it. Writing to `-` goes to the writer the caller passes (its stdout).

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use kiln_cache::archive::{ArchiveError, plan_save_image};
use kiln_cache::changes::{ChangesError, ContainerFs};
use kiln_cache::digest::Digest;
use kiln_cache::layer::{ApplyOptions, LayerError, Whiteouts, apply_layer};
use kiln_cache::reference::{Reference, ReferenceError};
use kiln_cache::store::{Store, StoreError};

/// Where a result goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Image,
    Local(PathBuf),
    Tar(Destination),
    Oci {
        destination: Destination,
        names: Vec<Reference>,
    },
    Docker {
        /// None: load into the store (kiln's "docker").
        destination: Option<Destination>,
        names: Vec<Reference>,
    },
}

/// A file or the caller's writer (`-`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    File(PathBuf),
    Stdout,
}

/// Why an `--output` value is invalid or exporting failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(
        "invalid --output {0:?}: expected type=image|local|tar|oci|docker[,dest=PATH][,name=NAME]"
    )]
    Syntax(String),
    #[error("invalid --output: type={0} needs dest=PATH")]
    MissingDestination(String),
    #[error(
        "invalid --output: unknown type {0:?} (kiln exports image, local, tar, oci and docker)"
    )]
    UnknownType(String),
    #[error("invalid --output name {name:?}")]
    Name {
        name: String,
        #[source]
        source: ReferenceError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error("exporting the file system")]
    Changes(#[from] ChangesError),
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the file system export thread panicked")]
    Panicked,
    #[error("unpacking into {path}")]
    Unpack {
        path: PathBuf,
        #[source]
        source: LayerError,
    },
}

impl Output {
    /// Parses an `--output` value (CSV `key=value` fields, or the `DIR` / `-` shorthand).
    pub fn parse(text: &str) -> Result<Output, ExportError> {
        if !text.contains('=') {
            return Ok(if text == "-" {
                Output::Tar(Destination::Stdout)
            } else if text.is_empty() {
                return Err(ExportError::Syntax(text.to_string()));
            } else {
                Output::Local(PathBuf::from(text))
            });
        }
        let mut kind = None;
        let mut destination = None;
        let mut names = Vec::new();
        for field in text.split(',') {
            let (key, value) = field
                .split_once('=')
                .ok_or_else(|| ExportError::Syntax(text.to_string()))?;
            match key.trim() {
                "type" => kind = Some(value.to_string()),
                "dest" => destination = Some(value.to_string()),
                "name" => {
                    for name in value.split(',').filter(|name| !name.is_empty()) {
                        names.push(Reference::parse(name).map_err(|source| ExportError::Name {
                            name: name.to_string(),
                            source,
                        })?);
                    }
                }
                // Accepted and meaningless for kiln (compression, push, ...): buildx options
                // for registries and attestation.
                _ => {}
            }
        }
        let kind = kind.unwrap_or_else(|| "local".to_string());
        let file = |destination: Option<String>| {
            destination.map(|dest| {
                if dest == "-" {
                    Destination::Stdout
                } else {
                    Destination::File(PathBuf::from(dest))
                }
            })
        };
        let needed = |value: Option<Destination>| {
            value.ok_or_else(|| ExportError::MissingDestination(kind.clone()))
        };
        match kind.as_str() {
            "image" | "registry" => Ok(Output::Image),
            "local" => match destination {
                Some(dest) if dest != "-" => Ok(Output::Local(PathBuf::from(dest))),
                _ => Err(ExportError::MissingDestination(kind.clone())),
            },
            "tar" => Ok(Output::Tar(needed(file(destination))?)),
            "oci" => Ok(Output::Oci {
                destination: needed(file(destination))?,
                names,
            }),
            "docker" => Ok(Output::Docker {
                destination: file(destination),
                names,
            }),
            other => Err(ExportError::UnknownType(other.to_string())),
        }
    }

    /// Whether the result is tagged in the store (`-t`): only for images kept there.
    pub fn tags_in_store(&self) -> bool {
        matches!(
            self,
            Output::Image
                | Output::Docker {
                    destination: None,
                    ..
                }
        )
    }
}

/// Exports the built image `id` (already in the store) as `output` says. `tags` (the `-t`
/// names) name archive images when `name=` is not given. `stdout` receives `dest=-` output.
pub fn export(
    store: &Store,
    id: &Digest,
    output: &Output,
    tags: &[Reference],
    stdout: &mut dyn Write,
) -> Result<(), ExportError> {
    match output {
        Output::Image
        | Output::Docker {
            destination: None, ..
        } => Ok(()),
        Output::Local(directory) => {
            std::fs::create_dir_all(directory).map_err(|source| ExportError::Write {
                path: directory.clone(),
                source,
            })?;
            let view = image_fs(store, id)?;
            let (mut reader, writer) = io::pipe().map_err(|source| ExportError::Write {
                path: directory.clone(),
                source,
            })?;
            std::thread::scope(|scope| {
                let producer = scope.spawn(move || {
                    let writer = writer;
                    view.1.export(writer)
                });
                let applied =
                    apply_layer(directory, &mut reader, &ApplyOptions::new(Whiteouts::Apply))
                        .map(drop)
                        .map_err(|source| ExportError::Unpack {
                            path: directory.clone(),
                            source,
                        });
                // The archive's end padding, so the writer never sees a closed pipe.
                let _ = io::copy(&mut reader, &mut io::sink());
                drop(reader);
                let exported = producer.join().map_err(|_| ExportError::Panicked)?;
                // The unpacking error explains a broken pipe on the export side.
                applied?;
                exported.map_err(ExportError::from)
            })
        }
        Output::Tar(destination) => write_to(destination, stdout, |out| {
            let view = image_fs(store, id)?;
            view.1.export(out).map_err(ExportError::from)
        }),
        Output::Oci { destination, names }
        | Output::Docker {
            destination: Some(destination),
            names,
        } => {
            let names: Vec<Reference> = if names.is_empty() {
                tags.to_vec()
            } else {
                names.clone()
            };
            let names: Vec<Reference> =
                names.into_iter().map(Reference::with_default_tag).collect();
            let plan = plan_save_image(store, id, &names)?;
            write_to(destination, stdout, |out| {
                plan.write(store, out).map(drop).map_err(ExportError::from)
            })
        }
    }
}

/// A read-only view of the image's file system (keep the directory alive while it is used).
fn image_fs(store: &Store, id: &Digest) -> Result<(tempfile::TempDir, ContainerFs), ExportError> {
    let record = store.image(id)?;
    let tmp = store.layout().tmp();
    let empty = tempfile::Builder::new()
        .prefix("export-")
        .tempdir_in(&tmp)
        .map_err(|source| ExportError::Write { path: tmp, source })?;
    let fs = ContainerFs::over_layers(store, empty.path(), &record.layers);
    Ok((empty, fs))
}

/// Runs `write` on the destination: a file written next to its final name and renamed into
/// place when complete, or `stdout`.
fn write_to(
    destination: &Destination,
    stdout: &mut dyn Write,
    write: impl FnOnce(&mut dyn Write) -> Result<(), ExportError>,
) -> Result<(), ExportError> {
    match destination {
        Destination::Stdout => {
            write(stdout)?;
            stdout.flush().map_err(|source| ExportError::Write {
                path: PathBuf::from("-"),
                source,
            })
        }
        Destination::File(path) => {
            let parent = match path.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => parent,
                _ => Path::new("."),
            };
            let io_error = |source| ExportError::Write {
                path: path.clone(),
                source,
            };
            let temporary = tempfile::NamedTempFile::new_in(parent).map_err(io_error)?;
            let mut buffered = io::BufWriter::new(temporary);
            write(&mut buffered)?;
            let temporary = buffered
                .into_inner()
                .map_err(|error| io_error(error.into_error()))?;
            temporary
                .persist(path)
                .map_err(|error| io_error(error.error))?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_parse_as_buildx_takes_them() {
        assert_eq!(Output::parse("out").unwrap(), Output::Local("out".into()));
        assert_eq!(
            Output::parse("-").unwrap(),
            Output::Tar(Destination::Stdout)
        );
        assert_eq!(
            Output::parse("type=local,dest=d").unwrap(),
            Output::Local("d".into())
        );
        assert_eq!(
            Output::parse("type=tar,dest=-").unwrap(),
            Output::Tar(Destination::Stdout)
        );
        assert_eq!(Output::parse("type=image").unwrap(), Output::Image);
        let Output::Oci { destination, names } =
            Output::parse("type=oci,dest=a.tar,name=app:1").unwrap()
        else {
            panic!("not oci");
        };
        assert_eq!(destination, Destination::File("a.tar".into()));
        assert_eq!(names.len(), 1);
        assert!(matches!(
            Output::parse("type=oci"),
            Err(ExportError::MissingDestination(_))
        ));
        assert!(matches!(
            Output::parse("type=nope,dest=x"),
            Err(ExportError::UnknownType(_))
        ));
        assert!(Output::parse("type=docker").unwrap().tags_in_store());
    }
}
