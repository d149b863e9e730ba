//! `kiln pull`, `kiln push`, `kiln login`, `kiln logout`: images to and from registries, with
//! Docker's output lines.

use std::io::{self, BufRead as _, IsTerminal as _, Read as _};

use kiln_cache::digest::Digest;
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
        let terminal = if self.to_stderr {
            io::stderr().is_terminal()
        } else {
            io::stdout().is_terminal()
        };
        let text = if terminal {
            let width = terminal_width(self.to_stderr);
            BARS.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .render(event, width)
        } else {
            match plain_line(&event) {
                Some(line) => format!("{line}\n"),
                None => return,
            }
        };
        if self.to_stderr {
            output::err(&text);
        } else {
            output::out(&text);
        }
    }
}

/// The line Docker prints for `event` when its output is not a terminal; None for byte counts,
/// which Docker shows only as progress bars.
fn plain_line(event: &Event) -> Option<String> {
    match describe(event) {
        Described::Heading(line) => Some(line),
        Described::Layer(layer, status, None) => Some(format!("{}: {status}", layer.short())),
        Described::Layer(_, _, Some(_)) => None,
    }
}

/// What an event shows: a line of its own, or a layer's status with the bytes moved so far
/// (current, total) for a transfer.
enum Described {
    Heading(String),
    Layer(Digest, String, Option<(u64, u64)>),
}

fn describe(event: &Event) -> Described {
    let layer = |layer: &Digest, status: &str| Described::Layer(*layer, status.to_string(), None);
    match event {
        Event::PullingFrom { tag, repository } => {
            Described::Heading(format!("{tag}: Pulling from {repository}"))
        }
        Event::PushingTo { repository } => {
            Described::Heading(format!("The push refers to repository [{repository}]"))
        }
        Event::LayerExists(digest) => layer(digest, "Already exists"),
        Event::LayerPulling(digest) => layer(digest, "Pulling fs layer"),
        Event::LayerDownloading {
            layer,
            current,
            total,
        } => Described::Layer(*layer, "Downloading".to_string(), Some((*current, *total))),
        Event::LayerPulled(digest) => layer(digest, "Pull complete"),
        Event::LayerPreparing(digest) => layer(digest, "Preparing"),
        Event::LayerUploading {
            layer,
            current,
            total,
        } => Described::Layer(*layer, "Pushing".to_string(), Some((*current, *total))),
        Event::LayerPresent(digest) => layer(digest, "Layer already exists"),
        Event::LayerMounted {
            layer: digest,
            from,
        } => Described::Layer(*digest, format!("Mounted from {from}"), None),
        Event::LayerPushed(digest) => layer(digest, "Pushed"),
        Event::LayerSkipped(digest) => layer(digest, "Skipped foreign layer"),
    }
}

/// The width of the terminal the lines go to (200 when it cannot be read, as Docker assumes).
fn terminal_width(to_stderr: bool) -> usize {
    use std::os::fd::AsFd as _;
    let size = if to_stderr {
        kiln_runtime::pty::window_size(io::stderr().as_fd())
    } else {
        kiln_runtime::pty::window_size(io::stdout().as_fd())
    };
    match size {
        Some(size) if size.cols > 0 => usize::from(size.cols),
        _ => 200,
    }
}

/// The per-layer lines on a terminal, redrawn in place as Docker's `jsonmessage` does: one line
/// per layer, in the order the layers first appear; a line without a layer starts afresh.
static BARS: std::sync::Mutex<Bars> = std::sync::Mutex::new(Bars {
    ids: Vec::new(),
    started: Vec::new(),
});

struct Bars {
    /// The layers' short IDs, in screen order (the cursor sits on the line below the last).
    ids: Vec<String>,
    /// When each layer's transfer was first seen (for the time left).
    started: Vec<(Digest, std::time::Instant)>,
}

impl Bars {
    /// The terminal output for one event: a plain line, or a layer's line rewritten in place.
    fn render(&mut self, event: Event, width: usize) -> String {
        let (layer, status, bytes) = match describe(&event) {
            Described::Heading(line) => {
                self.ids.clear();
                return line + "\n";
            }
            Described::Layer(layer, status, bytes) => (layer, status, bytes),
        };
        let bar = match bytes {
            Some((current, total)) => {
                let started = match self.started.iter().find(|(seen, _)| *seen == layer) {
                    Some((_, at)) => *at,
                    None => {
                        let now = std::time::Instant::now();
                        self.started.push((layer, now));
                        now
                    }
                };
                progress_bar(current, total, started.elapsed(), width)
            }
            None => String::new(),
        };
        let id = layer.short();
        let mut text = String::new();
        let line = match self.ids.iter().position(|seen| *seen == id) {
            Some(line) => line,
            None => {
                self.ids.push(id.clone());
                text.push('\n');
                self.ids.len() - 1
            }
        };
        let up = self.ids.len() - line;
        text.push_str(&format!(
            "\x1b[{up}A\x1b[2K\r{id}: {status} {bar}\r\x1b[{up}B"
        ));
        text
    }
}

/// Docker's progress text (`JSONProgress.String`): a 50-cell bar when the terminal is wider
/// than 110 columns, `CURRENT/TOTAL` in decimal units, and the time left.
fn progress_bar(current: u64, total: u64, elapsed: std::time::Duration, width: usize) -> String {
    if total == 0 {
        return format!("{:>8}", human_size(current));
    }
    let percentage = ((current as f64 / total as f64 * 100.0) as usize / 2).min(50);
    let mut text = String::new();
    if width > 110 {
        text.push_str(&format!(
            "[{}>{}] ",
            "=".repeat(percentage),
            " ".repeat(50 - percentage)
        ));
    }
    if current > total {
        text.push_str(&format!("{:>8}", human_size(current)));
    } else {
        text.push_str(&format!("{:>8}/{}", human_size(current), human_size(total)));
    }
    if current > 0 && percentage < 50 && width > 50 {
        let per_byte = elapsed.as_nanos() / u128::from(current);
        let left = u128::from(total - current) * per_byte / 1_000_000_000;
        text.push(' ');
        text.push_str(&go_seconds(u64::try_from(left).unwrap_or(u64::MAX)));
    }
    text
}

/// A whole number of seconds as Go's `time.Duration.String` writes it: `0s`, `45s`, `1m30s`,
/// `2h0m5s`.
fn go_seconds(seconds: u64) -> String {
    let (hours, minutes, seconds) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    if hours > 0 {
        format!("{hours}h{minutes}m{seconds}s")
    } else if minutes > 0 {
        format!("{minutes}m{seconds}s")
    } else {
        format!("{seconds}s")
    }
}

/// A size as Docker's `units.HumanSize` writes it: decimal units, four significant digits,
/// no trailing zeros (`0B`, `999B`, `1kB`, `12.35MB`).
fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut size = bytes as f64;
    let mut unit = 0;
    while size >= 1000.0 && unit < UNITS.len() - 1 {
        size /= 1000.0;
        unit += 1;
    }
    let integer_digits = if size < 1.0 {
        1
    } else {
        size.log10().floor() as usize + 1
    };
    let mut text = format!("{size:.*}", 4usize.saturating_sub(integer_digits));
    if text.contains('.') {
        text = text.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    format!("{text}{}", UNITS[unit])
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
    use super::{go_seconds, human_size, progress_bar, server_domain};
    use std::time::Duration;

    #[test]
    fn sizes_and_bars_are_written_as_docker_writes_them() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(1000), "1kB");
        assert_eq!(human_size(12_345_678), "12.35MB");
        assert_eq!(human_size(45_600_000), "45.6MB");
        assert_eq!(human_size(524_288_000), "524.3MB");
        assert_eq!(go_seconds(0), "0s");
        assert_eq!(go_seconds(90), "1m30s");
        assert_eq!(go_seconds(3605), "1h0m5s");
        let half = progress_bar(50_000_000, 100_000_000, Duration::from_secs(10), 120);
        assert_eq!(
            half,
            format!("[{}>{}]     50MB/100MB 10s", "=".repeat(25), " ".repeat(25))
        );
        let narrow = progress_bar(50_000_000, 100_000_000, Duration::from_secs(10), 97);
        assert_eq!(narrow, "    50MB/100MB 10s");
        let done = progress_bar(100, 100, Duration::from_secs(1), 120);
        assert_eq!(done, format!("[{}>] {:>8}/100B", "=".repeat(50), "100B"));
    }

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
