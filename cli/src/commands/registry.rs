//! `kiln pull`, `kiln push`, `kiln login`, `kiln logout`: images to and from registries, with
//! Docker's output lines.

use std::io::{self, BufRead as _, IsTerminal as _, Read as _};

use kiln_cache::reference::Reference;
use kiln_registry::credentials::{Credentials, Stored};
use kiln_registry::{
    ClientOptions, Event, Platform, Progress, PullOptions, Pulled, Registry, RegistryError,
};

use super::{Global, open_store};
use crate::{Exit, output};

/// The registry options of the global flags.
pub fn client_options(global: &Global) -> ClientOptions {
    ClientOptions {
        insecure_registries: global.insecure_registry.clone(),
        ..ClientOptions::default()
    }
}

/// Docker's per-layer lines (`a3ed95caeb02: Pull complete`), on stdout, or on stderr for the
/// pulls `kiln run` and `kiln create` make (stdout is the container's there, as with Docker).
pub(crate) struct Lines {
    to_stderr: bool,
}

/// The progress lines of an automatic pull (`kiln run`/`create`): Docker writes them to stderr.
pub(crate) const PULL_LINES_TO_STDERR: Lines = Lines { to_stderr: true };

impl Progress for Lines {
    fn event(&self, event: Event) {
        let line = match event {
            Event::PullingFrom { tag, repository } => format!("{tag}: Pulling from {repository}"),
            Event::LayerExists(layer) => format!("{}: Already exists", layer.short()),
            Event::LayerPulling(layer) => format!("{}: Pulling fs layer", layer.short()),
            Event::LayerPulled(layer) => format!("{}: Pull complete", layer.short()),
            Event::PushingTo { repository } => {
                format!("The push refers to repository [{repository}]")
            }
            Event::LayerPreparing(layer) => format!("{}: Preparing", layer.short()),
            Event::LayerPresent(layer) => format!("{}: Layer already exists", layer.short()),
            Event::LayerMounted { layer, from } => {
                format!("{}: Mounted from {from}", layer.short())
            }
            Event::LayerPushed(layer) => format!("{}: Pushed", layer.short()),
            Event::LayerSkipped(layer) => format!("{}: Skipped foreign layer", layer.short()),
        };
        if self.to_stderr {
            output::err(&format!("{line}\n"));
        } else {
            output::out(&format!("{line}\n"));
        }
    }
}

fn progress(quiet: bool) -> &'static dyn Progress {
    if quiet {
        &kiln_registry::Silent
    } else {
        &Lines { to_stderr: false }
    }
}

fn parse_reference(name: &str) -> Result<Reference, Exit> {
    Reference::parse(name).map_err(|error| output::error_of(&error))
}

#[derive(Debug, clap::Args)]
pub struct PullArgs {
    /// Download all tagged images in the repository
    #[arg(short = 'a', long = "all-tags")]
    all_tags: bool,
    /// Set platform if server is multi-platform capable (OS/ARCH[/VARIANT])
    #[arg(long, value_name = "PLATFORM")]
    platform: Option<String>,
    /// Suppress verbose output
    #[arg(short = 'q', long)]
    quiet: bool,
    /// NAME[:TAG|@DIGEST]
    #[arg(value_name = "NAME")]
    name: String,
}

pub fn pull(global: &Global, args: PullArgs) -> Exit {
    let reference = match parse_reference(&args.name) {
        Ok(reference) => reference,
        Err(exit) => return exit,
    };
    if args.all_tags && (reference.tag().is_some() || reference.digest().is_some()) {
        return output::error("tag can't be used with --all-tags/-a");
    }
    let platform = match args.platform.as_deref().map(Platform::parse).transpose() {
        Ok(platform) => platform,
        Err(error) => return output::error_of(&error),
    };
    let mut store = match open_store(global) {
        Ok(store) => store,
        Err(exit) => return exit,
    };
    let options = PullOptions { platform };
    let pulled =
        Registry::connect(reference.domain(), &client_options(global), None).and_then(|registry| {
            let references = if args.all_tags {
                let scopes = [kiln_registry::client::pull_scope(reference.path())];
                let mut tags = registry.tags(reference.path(), &scopes)?;
                tags.sort();
                tags.iter()
                    .map(|tag| Ok(reference.with_tag(tag)?))
                    .collect::<Result<Vec<_>, RegistryError>>()?
            } else {
                vec![reference.clone()]
            };
            let mut pulled = Vec::new();
            for reference in references {
                let one = kiln_registry::pull(
                    &mut store,
                    &registry,
                    &reference,
                    &options,
                    progress(args.quiet),
                )?;
                if !args.quiet {
                    output::out(&status(&one));
                }
                pulled.push(one);
            }
            Ok(pulled)
        });
    match pulled {
        Ok(pulled) => {
            let last = if args.all_tags {
                reference.name()
            } else {
                pulled
                    .last()
                    .map_or_else(|| reference.to_string(), |one| one.reference.to_string())
            };
            output::out(&format!("{last}\n"));
            Exit::Success
        }
        Err(error) => output::error_of(&error),
    }
}

/// `Digest: ...` and `Status: ...`, as Docker ends a pull.
fn status(pulled: &Pulled) -> String {
    let what = if pulled.up_to_date {
        "Image is up to date for"
    } else {
        "Downloaded newer image for"
    };
    format!(
        "Digest: {}\nStatus: {what} {}\n",
        pulled.digest,
        pulled.reference.familiar()
    )
}

#[derive(Debug, clap::Args)]
pub struct PushArgs {
    /// Suppress verbose output
    #[arg(short = 'q', long)]
    quiet: bool,
    /// NAME[:TAG]
    #[arg(value_name = "NAME")]
    name: String,
}

pub fn push(global: &Global, args: PushArgs) -> Exit {
    let reference = match parse_reference(&args.name) {
        Ok(reference) => reference,
        Err(exit) => return exit,
    };
    let store = match open_store(global) {
        Ok(store) => store,
        Err(exit) => return exit,
    };
    let pushed =
        Registry::connect(reference.domain(), &client_options(global), None).and_then(|registry| {
            kiln_registry::push(&store, &registry, &reference, progress(args.quiet))
        });
    match pushed {
        Ok(pushed) if args.quiet => {
            output::out(&format!("{}\n", pushed.reference));
            Exit::Success
        }
        Ok(pushed) => {
            output::out(&format!(
                "{}: digest: {} size: {}\n",
                pushed.reference.tag().unwrap_or("latest"),
                pushed.digest,
                pushed.size
            ));
            Exit::Success
        }
        Err(error) => output::error_of(&error),
    }
}

/// The registry a `login`/`logout` argument names: Docker Hub by default; a URL's scheme and
/// path are dropped (`https://host:5000/v2/` → `host:5000`).
fn server_domain(server: Option<&str>) -> String {
    let Some(server) = server else {
        return kiln_cache::reference::DEFAULT_DOMAIN.to_string();
    };
    let rest = server
        .strip_prefix("https://")
        .or_else(|| server.strip_prefix("http://"))
        .unwrap_or(server);
    let host = rest.split('/').next().unwrap_or(rest);
    match host {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => {
            kiln_cache::reference::DEFAULT_DOMAIN.to_string()
        }
        other => other.to_string(),
    }
}

#[derive(Debug, clap::Args)]
pub struct LoginArgs {
    /// Username
    #[arg(short = 'u', long)]
    username: Option<String>,
    /// Password
    #[arg(short = 'p', long)]
    password: Option<String>,
    /// Take the password from stdin
    #[arg(long, conflicts_with = "password")]
    password_stdin: bool,
    /// The registry [default: Docker Hub]
    #[arg(value_name = "SERVER")]
    server: Option<String>,
}

/// Reads one line from the terminal, optionally without echo (`stty -echo`).
fn prompt(label: &str, hidden: bool) -> Result<String, Exit> {
    output::err(label);
    let stty = |mode: &str| {
        let _ = std::process::Command::new("stty")
            .arg(mode)
            .stdin(std::process::Stdio::inherit())
            .status();
    };
    if hidden {
        stty("-echo");
    }
    let mut line = String::new();
    let read = io::stdin().lock().read_line(&mut line);
    if hidden {
        stty("echo");
        output::err("\n");
    }
    read.map_err(|error| output::error(format!("reading from the terminal: {error}")))?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

pub fn login(global: &Global, args: LoginArgs) -> Exit {
    let domain = server_domain(args.server.as_deref());
    if args.password.is_some() {
        output::err("WARNING! Using --password via the CLI is insecure. Use --password-stdin.\n");
    }
    let password = if args.password_stdin {
        if args.username.is_none() {
            return output::error("Must provide --username with --password-stdin");
        }
        let mut text = String::new();
        if let Err(error) = io::stdin().read_to_string(&mut text) {
            return output::error(format!("reading the password from stdin: {error}"));
        }
        Some(text.trim_end_matches(['\r', '\n']).to_string())
    } else {
        args.password.clone()
    };
    let interactive = io::stdin().is_terminal();
    let username = match (args.username, interactive) {
        (Some(username), _) => username,
        (None, true) => match prompt("Username: ", false) {
            Ok(username) => username,
            Err(exit) => return exit,
        },
        (None, false) => {
            return output::error("Cannot perform an interactive login from a non TTY device");
        }
    };
    let password = match (password, interactive) {
        (Some(password), _) => password,
        (None, true) => match prompt("Password: ", true) {
            Ok(password) => password,
            Err(exit) => return exit,
        },
        (None, false) => {
            return output::error("Cannot perform an interactive login from a non TTY device");
        }
    };
    if username.is_empty() || password.is_empty() {
        return output::error("Username and password are required");
    }
    let credentials = Credentials { username, password };
    let options = client_options(global);
    let verified = Registry::connect(&domain, &options, Some(credentials.clone()))
        .and_then(|registry| registry.verify_login())
        .and_then(|()| options.docker_config.store(&domain, &credentials));
    match verified {
        Ok(Stored::File(path)) => {
            output::err(&format!(
                "WARNING! Your password will be stored unencrypted in {}.\n\
                 Configure a credential helper to remove this warning. See\n\
                 https://docs.docker.com/engine/reference/commandline/login/#credential-stores\n\n",
                path.display()
            ));
            output::out("Login Succeeded\n");
            Exit::Success
        }
        Ok(Stored::Helper(_)) => {
            output::out("Login Succeeded\n");
            Exit::Success
        }
        Err(error) => output::error_of(&error),
    }
}

#[derive(Debug, clap::Args)]
pub struct LogoutArgs {
    /// The registry [default: Docker Hub]
    #[arg(value_name = "SERVER")]
    server: Option<String>,
}

pub fn logout(global: &Global, args: LogoutArgs) -> Exit {
    let domain = server_domain(args.server.as_deref());
    let key = kiln_registry::credentials::config_key(&domain);
    match client_options(global).docker_config.erase(&domain) {
        Ok(true) => {
            output::out(&format!("Removing login credentials for {key}\n"));
            Exit::Success
        }
        Ok(false) => {
            output::out(&format!("Not logged in to {key}\n"));
            Exit::Success
        }
        Err(error) => output::error_of(&error),
    }
}

/// `kiln build --cache-from`/`--cache-to` and the build cache's size cap, around one build:
/// [`BuildCache::prepare`] before it (parse, import), [`BuildCache::finish`] after it (export,
/// cap). Lines go to stderr as BuildKit prints them, unless quiet.
pub struct BuildCache {
    exports: Vec<kiln_registry::cache::CacheExport>,
    options: ClientOptions,
    /// When the build started (seconds): records used since are this build's.
    since: i64,
    /// The size cap (`KILN_BUILD_CACHE_MAX`, else the store's default).
    cap: u64,
    quiet: bool,
}

/// The variable that overrides the build cache's size cap (a Docker size: `5GB`, `500m`).
pub const BUILD_CACHE_MAX: &str = "KILN_BUILD_CACHE_MAX";

impl BuildCache {
    /// Parses the specs and the cap (errors before anything is built) and imports every
    /// `--cache-from` into the store. A cache that cannot be imported is a warning, as
    /// BuildKit has it: the build runs without it.
    pub fn prepare(
        global: &Global,
        store: &mut kiln_cache::store::Store,
        cache_from: &[String],
        cache_to: &[String],
        quiet: bool,
    ) -> Result<BuildCache, Exit> {
        use kiln_registry::cache::{CacheExport, CacheImport};
        let imports = cache_from
            .iter()
            .map(|spec| spec.parse::<CacheImport>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| output::error_of(&error))?;
        let exports = cache_to
            .iter()
            .map(|spec| spec.parse::<CacheExport>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| output::error_of(&error))?;
        let cap = match std::env::var(BUILD_CACHE_MAX) {
            Ok(value) if !value.trim().is_empty() => kiln_cache::units::ram_in_bytes(&value)
                .ok_or_else(|| {
                    output::error(format!(
                        "invalid {BUILD_CACHE_MAX} {value:?}: expected a size like 5GB"
                    ))
                })?,
            _ => kiln_cache::buildcache::default_build_cache_cap(store.layout().root()),
        };
        let options = client_options(global);
        for import in &imports {
            let started = std::time::Instant::now();
            let location = &import.location;
            let lines = match kiln_registry::cache::import(
                store,
                location,
                &options,
                &kiln_registry::Silent,
            ) {
                Ok(imported) if imported.digest.is_none() => {
                    format!(
                        "#0 importing cache manifest from {location}\n#0 WARNING: no cache at {location}\n"
                    )
                }
                Ok(imported) => {
                    let mounts = if imported.mounts + imported.mounts_present > 0 {
                        format!(
                            "#0 {} cache mounts imported, {} already present\n",
                            imported.mounts, imported.mounts_present
                        )
                    } else {
                        String::new()
                    };
                    format!(
                        "#0 importing cache manifest from {location}\n#0 {} records imported, {} already present\n{mounts}#0 DONE {:.1}s\n",
                        imported.records,
                        imported.present,
                        started.elapsed().as_secs_f64()
                    )
                }
                Err(error) => format!(
                    "#0 importing cache manifest from {location}\n#0 WARNING: {}\n",
                    error_chain(&error)
                ),
            };
            if !quiet {
                output::err(&lines);
            }
        }
        Ok(BuildCache {
            exports,
            options,
            since: kiln_cache::buildcache::now(),
            cap,
            quiet,
        })
    }

    /// After a successful build of `image`: exports the cache to every `--cache-to` (a failure
    /// fails the command unless the spec says `ignore-error=true`), then keeps the build cache
    /// within its cap.
    pub fn finish(
        &self,
        store: &kiln_cache::store::Store,
        image: &kiln_cache::digest::Digest,
    ) -> Result<(), Exit> {
        for export in &self.exports {
            let started = std::time::Instant::now();
            let location = &export.location;
            let result =
                kiln_registry::cache::select_records(store, export.mode, image, self.since)
                    .and_then(|records| {
                        kiln_registry::cache::export(
                            store,
                            &records,
                            location,
                            export.cache_mounts,
                            &self.options,
                        )
                    });
            match result {
                Ok(exported) => {
                    if !self.quiet {
                        output::err(&format!(
                            "#0 exporting cache to {location}\n#0 writing {} records, {} of {} blobs new\n#0 writing cache manifest {} done\n#0 DONE {:.1}s\n",
                            exported.records,
                            exported.written,
                            exported.blobs,
                            exported.digest,
                            started.elapsed().as_secs_f64()
                        ));
                    }
                }
                Err(error) if export.ignore_error => {
                    if !self.quiet {
                        output::err(&format!(
                            "#0 exporting cache to {location}\n#0 WARNING: {}\n",
                            error_chain(&error)
                        ));
                    }
                }
                Err(error) => return Err(output::error_of(&error)),
            }
        }
        match store.enforce_build_cache_cap(self.cap) {
            Ok(enforced) if enforced.removed > 0 && !self.quiet => {
                output::err(&format!(
                    "#0 build cache over {}: removed {} least recently used records, freed {}\n",
                    crate::human::size(self.cap),
                    enforced.removed,
                    crate::human::size(enforced.freed)
                ));
            }
            Ok(_) => {}
            Err(error) => return Err(output::error_of(&error)),
        }
        Ok(())
    }
}

/// An error and its causes on one line (`a: b: c`), for warnings.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::server_domain;

    #[test]
    fn login_servers_are_reduced_to_their_registry() {
        assert_eq!(server_domain(None), "docker.io");
        assert_eq!(
            server_domain(Some("https://index.docker.io/v1/")),
            "docker.io"
        );
        assert_eq!(
            server_domain(Some("http://localhost:5000/v2/")),
            "localhost:5000"
        );
        assert_eq!(server_domain(Some("registry.example")), "registry.example");
    }
}
