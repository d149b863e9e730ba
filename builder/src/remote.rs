//! Remote sources of `ADD`: files downloaded over HTTP(S) and git repositories checked out
//! with the system `git`.
//!
//! Downloads stream into a file while their SHA-256 is computed, so a `--checksum` is checked
//! without reading the file twice; the file's name comes from the URL's last path segment and
//! its time from `Last-Modified`, as Docker does. Git sources follow BuildKit's URL syntax
//! (`https://host/repo.git#ref:subdir`, `git@host:repo.git`, `git://`); the clone is shallow
//! when the ref allows it, and `.git` is removed unless `--keep-git-dir`.
//!
//! Owns no cache logic: the caller keys the step on what this returns (checksum, content
//! digest, commit).

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_cache::digest::{Digest, DigestWriter};

/// Why a remote source could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("failed to download {url}: {message}")]
    Http { url: String, message: String },
    #[error("writing the download of {url}")]
    Write {
        url: String,
        #[source]
        source: io::Error,
    },
    #[error("checksum mismatch for {url}: expected {expected}, the downloaded content is {actual}")]
    Checksum {
        url: String,
        expected: String,
        actual: Digest,
    },
    #[error("invalid --checksum={0}: expected sha256:<64 hex digits>")]
    BadChecksum(String),
    #[error("git {operation} of {url} failed: {message}")]
    Git {
        url: String,
        operation: &'static str,
        message: String,
    },
    #[error("running git: {0} (is git installed?)")]
    NoGit(#[source] io::Error),
    #[error("{subdir:?} is not a directory of {url}")]
    NoSubdirectory { url: String, subdir: String },
}

/// A downloaded file.
#[derive(Debug)]
pub struct Download {
    pub path: PathBuf,
    /// The SHA-256 of its content.
    pub digest: Digest,
    /// The last segment of the URL's path (`index.html` when there is none).
    pub file_name: String,
    /// `Last-Modified`, in seconds since the epoch.
    pub mtime: Option<i64>,
}

/// Whether an ADD source is a URL to download (`http://`, `https://`) rather than a git
/// repository.
pub fn is_http_url(source: &str) -> bool {
    (source.starts_with("http://") || source.starts_with("https://")) && !is_git_url(source)
}

/// Whether an ADD source names a git repository, as BuildKit decides: `git://`, `git@`,
/// `ssh://`, or an `http(s)` URL whose path ends in `.git` (before a `#fragment`).
pub fn is_git_url(source: &str) -> bool {
    if source.starts_with("git://") || source.starts_with("git@") || source.starts_with("ssh://") {
        return true;
    }
    if source.starts_with("http://") || source.starts_with("https://") {
        let path = source.split('#').next().unwrap_or(source);
        let path = path.split('?').next().unwrap_or(path);
        return path.trim_end_matches('/').ends_with(".git");
    }
    false
}

/// Checks a `--checksum` value; returns the digest it names.
pub fn parse_checksum(text: &str) -> Result<Digest, RemoteError> {
    text.parse::<Digest>()
        .ok()
        .filter(|_| text.starts_with("sha256:"))
        .ok_or_else(|| RemoteError::BadChecksum(text.to_string()))
}

/// Downloads `url` into a new file in `dir`. With `checksum`, a different content is an error
/// (the file is removed). The caller owns `dir` and cleans it up.
pub fn download(url: &str, dir: &Path, checksum: Option<&Digest>) -> Result<Download, RemoteError> {
    let http = |message: String| RemoteError::Http {
        url: url.to_string(),
        message,
    };
    let response = ureq::get(url)
        .call()
        .map_err(|error| http(error.to_string()))?;
    let mtime = response
        .headers()
        .get("last-modified")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| chrono::DateTime::parse_from_rfc2822(value).ok())
        .map(|time| time.timestamp());
    let file_name = url_file_name(url);
    let path = dir.join("download");
    let write_error = |source| RemoteError::Write {
        url: url.to_string(),
        source,
    };
    let file = fs::File::create(&path).map_err(write_error)?;
    let mut writer = DigestWriter::new(io::BufWriter::new(file));
    let mut body = response.into_body().into_reader();
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let read = match body.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(http(error.to_string())),
        };
        writer.write_all(&buffer[..read]).map_err(write_error)?;
    }
    let (digest, _, mut inner) = writer.finish();
    inner.flush().map_err(write_error)?;
    if let Some(expected) = checksum
        && *expected != digest
    {
        let _ = fs::remove_file(&path);
        return Err(RemoteError::Checksum {
            url: url.to_string(),
            expected: expected.to_string(),
            actual: digest,
        });
    }
    Ok(Download {
        path,
        digest,
        file_name,
        mtime,
    })
}

/// The last segment of a URL's path, as Docker names a downloaded file.
fn url_file_name(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.split(['?', '#']).next().unwrap_or(rest);
    let path = rest.split_once('/').map_or("", |(_, path)| path);
    path.rsplit('/')
        .find(|segment| !segment.is_empty())
        .filter(|_| !path.ends_with('/'))
        .unwrap_or("index.html")
        .to_string()
}

/// A git source as BuildKit reads it: the repository, then `#ref:subdir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitSource {
    pub remote: String,
    pub reference: Option<String>,
    pub subdir: Option<String>,
}

impl GitSource {
    pub fn parse(source: &str) -> GitSource {
        let (remote, fragment) = match source.split_once('#') {
            Some((remote, fragment)) => (remote, Some(fragment)),
            None => (source, None),
        };
        let (reference, subdir) = match fragment {
            None => (None, None),
            Some(fragment) => match fragment.split_once(':') {
                Some((reference, subdir)) => (
                    Some(reference.to_string()).filter(|r| !r.is_empty()),
                    Some(subdir.to_string()).filter(|s| !s.is_empty()),
                ),
                None => (Some(fragment.to_string()).filter(|r| !r.is_empty()), None),
            },
        };
        GitSource {
            remote: remote.to_string(),
            reference,
            subdir,
        }
    }
}

/// A checked-out repository.
#[derive(Debug)]
pub struct Checkout {
    /// The directory to copy (the subdirectory when one was named).
    pub root: PathBuf,
    /// The commit checked out.
    pub commit: String,
}

/// Clones `source` into `dir/checkout` with the system `git` and checks out its ref (the
/// default branch without one). `.git` is removed unless `keep_git_dir`.
pub fn clone(source: &GitSource, dir: &Path, keep_git_dir: bool) -> Result<Checkout, RemoteError> {
    let checkout = dir.join("checkout");
    let git = |args: &[&str], operation: &'static str| -> Result<String, RemoteError> {
        let output = Command::new("git")
            .args(args)
            .env("GIT_TERMINAL_PROMPT", "0")
            .output()
            .map_err(RemoteError::NoGit)?;
        if !output.status.success() {
            return Err(RemoteError::Git {
                url: source.remote.clone(),
                operation,
                message: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    };
    let target = checkout.to_string_lossy().to_string();
    git(
        &["clone", "--quiet", "--no-checkout", &source.remote, &target],
        "clone",
    )?;
    let reference = source
        .reference
        .clone()
        .unwrap_or_else(|| "HEAD".to_string());
    // A branch or tag name, else a commit.
    let commit = git(
        &[
            "-C",
            &target,
            "rev-parse",
            "--verify",
            "--quiet",
            &format!("{reference}^{{commit}}"),
        ],
        "rev-parse",
    )
    .or_else(|_| {
        git(
            &[
                "-C",
                &target,
                "rev-parse",
                "--verify",
                &format!("origin/{reference}^{{commit}}"),
            ],
            "rev-parse",
        )
    })?;
    git(
        &["-C", &target, "checkout", "--quiet", "--detach", &commit],
        "checkout",
    )?;
    git(
        &[
            "-C",
            &target,
            "submodule",
            "update",
            "--quiet",
            "--init",
            "--recursive",
        ],
        "submodule update",
    )?;
    if !keep_git_dir {
        let dot_git = checkout.join(".git");
        fs::remove_dir_all(&dot_git)
            .or_else(|_| fs::remove_file(&dot_git))
            .map_err(|source_error| RemoteError::Write {
                url: source.remote.clone(),
                source: source_error,
            })?;
    }
    let root = match &source.subdir {
        None => checkout,
        Some(subdir) => {
            let cleaned = kiln_parser::path::clean(&format!("/{subdir}"));
            let root = checkout.join(cleaned.trim_start_matches('/'));
            // Stay inside the checkout: no symlinked way out.
            let inside = fs::canonicalize(&root)
                .ok()
                .zip(fs::canonicalize(&checkout).ok())
                .is_some_and(|(root, checkout)| root.starts_with(checkout) && root.is_dir());
            if !inside {
                return Err(RemoteError::NoSubdirectory {
                    url: source.remote.clone(),
                    subdir: subdir.clone(),
                });
            }
            root
        }
    };
    Ok(Checkout { root, commit })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_told_apart() {
        assert!(is_http_url("https://example.com/a.tar.gz"));
        assert!(!is_http_url("https://example.com/repo.git#main"));
        assert!(is_git_url("https://example.com/repo.git#main:sub"));
        assert!(is_git_url("git@github.com:moby/buildkit.git"));
        assert!(is_git_url("git://host/repo"));
        assert!(!is_git_url("dir/file.git"));
    }

    #[test]
    fn file_names_come_from_the_url_path() {
        assert_eq!(url_file_name("http://h/a/b.txt?x=1"), "b.txt");
        assert_eq!(url_file_name("http://h:80/b.txt#frag"), "b.txt");
        assert_eq!(url_file_name("http://h/"), "index.html");
        assert_eq!(url_file_name("http://h"), "index.html");
    }

    #[test]
    fn git_fragments_name_ref_and_subdirectory() {
        assert_eq!(
            GitSource::parse("https://h/r.git#v1:docs"),
            GitSource {
                remote: "https://h/r.git".to_string(),
                reference: Some("v1".to_string()),
                subdir: Some("docs".to_string()),
            }
        );
        assert_eq!(GitSource::parse("git@h:r.git").reference, None);
        assert_eq!(
            GitSource::parse("https://h/r.git#:sub").subdir.as_deref(),
            Some("sub")
        );
    }
}
