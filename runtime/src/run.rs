//! The caller's side of running a container: prepare the container directory, start the init
//! program, send it the spec, forward signals, collect the report.

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::unistd::pipe2;

use crate::cgroup::Cgroup;
use crate::container::{empty_lower_dir, rootfs_dir};
use crate::error::RuntimeError;
use crate::forward::Forwarding;
use crate::init::{FDS_ENV, InitMessage, NamespaceId, PARENT_ENV, Report};
use crate::spec::{Dns, Network, Outcome, Spec};

/// Files in the container directory that are bind-mounted over `/etc/<name>`.
pub(crate) const ETC_FILES: [&str; 3] = ["hostname", "hosts", "resolv.conf"];

/// Nameservers used when the host has none usable (Docker's defaults).
const DEFAULT_NAMESERVERS: &str = "nameserver 8.8.8.8\nnameserver 8.8.4.4\n";

/// The container process's standard streams. The init and the container inherit them.
#[derive(Debug)]
pub struct Io {
    /// Standard input.
    pub stdin: Stdio,
    /// Standard output.
    pub stdout: Stdio,
    /// Standard error.
    pub stderr: Stdio,
}

impl Io {
    /// The caller's own streams (foreground `kiln run`).
    pub fn inherit() -> Self {
        Io {
            stdin: Stdio::inherit(),
            stdout: Stdio::inherit(),
            stderr: Stdio::inherit(),
        }
    }
}

impl Default for Io {
    fn default() -> Self {
        Io::inherit()
    }
}

/// Runs `spec` to completion in a fresh process tree and returns how its command ended
/// ([`Outcome`]: exit status and whether the OOM killer struck).
///
/// Starts `init_program init_args...` (the kiln binary with its init marker, or a test
/// binary; its `main` must call [`crate::init_main`]), which creates the namespaces and
/// becomes the container's parent; the container's command runs as PID 1 of a new PID
/// namespace. Stdio per `io`. While it runs, SIGINT/SIGTERM/SIGHUP/SIGQUIT sent to this
/// process are forwarded to the container instead of taking their usual action (the previous
/// handlers come back when the last concurrent `run` returns). The exit status comes back over a
/// pipe from the init (not through the init's own exit status, so setup errors stay typed).
///
/// Writes `hostname`, `hosts` and `resolv.conf` in `spec.container_dir` and creates its
/// `rootfs/` (and `empty-lower/` for an image without layers). Cleanup: every mount exists
/// only in the container's mount namespace, which the kernel tears down when its last
/// process exits, before this function returns; nothing is mounted on the host. The upper
/// directory keeps the container's writes; the caller removes the directories.
///
/// Before starting the init, creates the container's cgroup `kiln/<spec.id>` and applies
/// `spec.resources` to it (the container's PID 1 joins it; this process never does),
/// resolves the capabilities and compiles the seccomp filter, so a bad limit, capability
/// name or profile fails here, before any process starts. After the init ends, reads the OOM
/// counter and removes the cgroup, killing anything left in it (the init was killed, say).
///
/// If this process dies, the init gets SIGKILL (parent-death signal of the thread calling
/// `run`, which blocks until the end) and the container dies with it; the empty cgroup stays
/// until the next `run` with the same id or [`crate::remove_cgroup`].
///
/// Errors: [`RuntimeError::exit_code`] gives Docker's exit code (127 command not found, 126
/// not executable, 125 everything else).
pub fn run(
    spec: &Spec,
    init_program: &Path,
    init_args: &[&str],
    io: Io,
) -> Result<Outcome, RuntimeError> {
    run_notifying(spec, init_program, init_args, io, &mut |_| {})
}

/// [`run`], calling `started` with the host pid of the container's PID 1 once its command
/// was executed (not called when setup fails). For a detached container's monitor, which
/// records the container as running and reports setup errors (127, 126...) to the CLI before
/// the container ends.
pub fn run_notifying(
    spec: &Spec,
    init_program: &Path,
    init_args: &[&str],
    io: Io,
    started: &mut dyn FnMut(i32),
) -> Result<Outcome, RuntimeError> {
    run_started(spec, init_program, init_args, io, &mut |event| {
        started(event.pid)
    })
}

/// What [`run_started`] hands its caller once the container's command was executed.
#[derive(Debug)]
pub struct Started {
    /// The host pid of the container's PID 1.
    pub pid: i32,
    /// With [`Spec::tty`], the master side of the container's terminal (close-on-exec): what
    /// the container writes is read from it, input and resizes go to it. The caller owns it;
    /// reads fail with EIO once the container's last process is gone.
    pub terminal: Option<OwnedFd>,
}

/// [`run_notifying`], handing over a [`Started`] (pid and, with [`Spec::tty`], the terminal).
pub fn run_started(
    spec: &Spec,
    init_program: &Path,
    init_args: &[&str],
    io: Io,
    started: &mut dyn FnMut(Started),
) -> Result<Outcome, RuntimeError> {
    spec.validate()?;
    let held = crate::caps::held().map_err(|source| RuntimeError::Init {
        step: "reading kiln's own capabilities",
        program: init_program.to_path_buf(),
        source,
    })?;
    let capabilities = crate::caps::resolve(spec, held)?;
    let seccomp = crate::seccomp::for_spec(spec, capabilities)?;
    prepare_container_dir(spec)?;
    let mut cgroup = Cgroup::create(&spec.id, &spec.resources, spec.privileged)?;
    let init_error = |step: &'static str| {
        move |source: std::io::Error| RuntimeError::Init {
            step,
            program: init_program.to_path_buf(),
            source,
        }
    };
    // The container's PID 1 sends its terminal's master through this socket (see `pty`).
    let console = if spec.tty {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()
            .map_err(init_error("creating the terminal socket"))?;
        let theirs = above_stdio(theirs.into()).map_err(init_error("creating a pipe"))?;
        Some((OwnedFd::from(ours), theirs))
    } else {
        None
    };
    let message = InitMessage {
        spec: spec.clone(),
        console_fd: console.as_ref().map(|(_, theirs)| theirs.as_raw_fd()),
        host_mount_ns: NamespaceId::of_mount_namespace()
            .map_err(init_error("reading the host mount namespace"))?,
        capabilities,
        seccomp,
        cgroup_procs: cgroup.procs_files(),
    };
    let payload = serde_json::to_vec(&message)
        .map_err(|error| init_error("encoding the spec")(error.into()))?;

    let (spec_read, spec_write) = pipe().map_err(init_error("creating a pipe"))?;
    let (report_read, report_write) = pipe().map_err(init_error("creating a pipe"))?;
    let inherited = [spec_read.as_raw_fd(), report_write.as_raw_fd()];
    let console_fd = console.as_ref().map(|(_, theirs)| theirs.as_raw_fd());

    let mut command = Command::new(init_program);
    command
        .args(init_args)
        .env(FDS_ENV, format!("{},{}", inherited[0], inherited[1]))
        .env(PARENT_ENV, std::process::id().to_string())
        .stdin(io.stdin)
        .stdout(io.stdout)
        .stderr(io.stderr);
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe calls (fcntl, prctl) on integers; it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            for fd in inherited.into_iter().chain(console_fd) {
                if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };

    let mut forwarding = Forwarding::install();
    let mut child = command.spawn().map_err(init_error("starting"))?;
    forwarding.target(child.id());
    drop(spec_read);
    drop(report_write);
    let console = console.map(|(ours, _theirs)| ours);

    // The init reads the whole spec before anything else, so this cannot deadlock; a write
    // error (the init died) shows up below as a missing report.
    let sent = std::fs::File::from(spec_write).write_all(&payload);
    let mut reports =
        serde_json::Deserializer::from_reader(std::fs::File::from(report_read)).into_iter();
    let mut report = reports.next();
    if let Some(Ok(Report::Started(pid))) = report {
        // The master was sent before the command was executed, so it is already queued;
        // end of file (nothing sent) leaves `None`.
        let terminal = console
            .as_ref()
            .and_then(|socket| crate::pty::receive_fd(socket.as_fd()).ok().flatten());
        started(Started { pid, terminal });
        report = reports.next();
    }
    let status = child.wait().map_err(init_error("waiting for"))?;
    drop(forwarding);
    let oom_killed = cgroup.oom_killed();
    cgroup.remove()?;

    match report {
        Some(Ok(Report::Exited(exit))) => Ok(Outcome { exit, oom_killed }),
        Some(Ok(Report::Failed(error))) => Err(error.into()),
        Some(Ok(Report::Started(_))) => Err(RuntimeError::InitDied {
            program: init_program.to_path_buf(),
            status: format!("{status}, reported the start twice"),
        }),
        Some(Err(error)) if !error.is_eof() => Err(RuntimeError::InitDied {
            program: init_program.to_path_buf(),
            status: format!("{status}, unreadable report: {error}"),
        }),
        None | Some(Err(_)) => {
            if let Err(source) = sent {
                return Err(init_error("talking to")(source));
            }
            Err(RuntimeError::InitDied {
                program: init_program.to_path_buf(),
                status: status.to_string(),
            })
        }
    }
}

/// A close-on-exec pipe whose ends are above 2, so the child's stdio setup cannot clobber
/// them even when this process runs with a closed standard stream.
pub(crate) fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let (read, write) = pipe2(OFlag::O_CLOEXEC)?;
    Ok((above_stdio(read)?, above_stdio(write)?))
}

pub(crate) fn above_stdio(fd: OwnedFd) -> std::io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    let duplicate = fcntl(&fd, FcntlArg::F_DUPFD_CLOEXEC(3))?;
    // SAFETY: F_DUPFD_CLOEXEC returned a new fd that nothing else owns.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(duplicate) })
}

fn prepare_container_dir(spec: &Spec) -> Result<(), RuntimeError> {
    let dir = &spec.container_dir;
    let failed = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RuntimeError::ContainerDir { path, source }
    };
    for needed in [dir.clone(), rootfs_dir(spec)] {
        std::fs::create_dir_all(&needed).map_err(failed(&needed))?;
    }
    if spec.lower_dirs.is_empty() {
        let empty = empty_lower_dir(spec);
        std::fs::create_dir_all(&empty).map_err(failed(&empty))?;
    }
    let contents = [
        format!("{}\n", spec.hostname),
        hosts_file(spec),
        with_dns(
            resolv_conf(
                spec.network,
                std::fs::read_to_string("/etc/resolv.conf").ok(),
            ),
            &spec.dns,
        ),
    ];
    for (name, content) in ETC_FILES.into_iter().zip(contents) {
        let path = dir.join(name);
        write_replacing(&path, content.as_bytes()).map_err(failed(&path))?;
    }
    Ok(())
}

/// Writes `path` by creating a new temp file beside it and renaming it over `path`, so a
/// symlink left at `path` is replaced, never followed (it could point at a host file).
fn write_replacing(path: &Path, content: &[u8]) -> std::io::Result<()> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let temp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    match std::fs::remove_file(&temp) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
        Ok(()) | Err(_) => {}
    }
    // create_new is O_CREAT|O_EXCL: it fails on an existing name, symlinks included.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temp)?;
    file.write_all(content)?;
    drop(file);
    std::fs::rename(&temp, path)
}

/// Docker's `/etc/hosts` for a container: the localhost block, the `--add-host` entries, then
/// the container's name. With the host network Docker copies the host's file; the extra
/// entries and the host name line are added here too.
fn hosts_file(spec: &Spec) -> String {
    let mut hosts = match spec.network {
        Network::Host => std::fs::read_to_string("/etc/hosts").unwrap_or_default(),
        Network::None => String::new(),
    };
    if hosts.is_empty() {
        hosts = "127.0.0.1\tlocalhost\n\
                 ::1\tlocalhost ip6-localhost ip6-loopback\n\
                 fe00::0\tip6-localnet\n\
                 ff00::0\tip6-mcastprefix\n\
                 ff02::1\tip6-allnodes\n\
                 ff02::2\tip6-allrouters\n"
            .into();
    }
    if !hosts.ends_with('\n') {
        hosts.push('\n');
    }
    for entry in &spec.extra_hosts {
        hosts.push_str(&format!("{}\t{}\n", entry.address, entry.name));
    }
    hosts.push_str(&format!("127.0.0.1\t{}\n", spec.hostname));
    hosts
}

/// Docker's resolv.conf with `--dns`, `--dns-search` or `--dns-option` (libnetwork
/// `resolvconf.Build`): `nameserver` lines, then `search`, then `options`, each taken from the
/// flags when given and from `base` (the filtered host file) otherwise. Without any flag,
/// `base` as is. A search list of `.` means no search line.
pub(crate) fn with_dns(base: String, dns: &Dns) -> String {
    if dns.is_empty() {
        return base;
    }
    let from_base = |key: &str| -> Vec<String> {
        base.lines()
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                (words.next() == Some(key)).then(|| words.map(str::to_string).collect::<Vec<_>>())
            })
            .flatten()
            .collect()
    };
    let servers: Vec<String> = if dns.servers.is_empty() {
        from_base("nameserver")
    } else {
        dns.servers.iter().map(ToString::to_string).collect()
    };
    let search = if dns.search.is_empty() {
        from_base("search")
    } else {
        dns.search.clone()
    };
    let options = if dns.options.is_empty() {
        from_base("options")
    } else {
        dns.options.clone()
    };
    let mut text = String::new();
    for server in servers {
        text.push_str(&format!("nameserver {server}\n"));
    }
    if !search.is_empty() && search.join(" ").trim() != "." {
        text.push_str(&format!("search {}\n", search.join(" ")));
    }
    if !options.is_empty() {
        text.push_str(&format!("options {}\n", options.join(" ")));
    }
    text
}

/// The host's resolv.conf; in a network namespace of its own the container cannot reach a
/// loopback resolver, so those lines go (as Docker does) and defaults fill an empty result.
pub(crate) fn resolv_conf(network: Network, host: Option<String>) -> String {
    let host = host.unwrap_or_default();
    let kept: Vec<&str> = host
        .lines()
        .filter(|line| {
            network == Network::Host || {
                let mut words = line.split_whitespace();
                !(words.next() == Some("nameserver")
                    && words
                        .next()
                        .is_some_and(|address| address.starts_with("127.") || address == "::1"))
            }
        })
        .collect();
    let has_nameserver = kept
        .iter()
        .any(|line| line.split_whitespace().next() == Some("nameserver"));
    let mut text = kept.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    if !has_nameserver {
        text.push_str(DEFAULT_NAMESERVERS);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_dir_files_replace_symlinks_instead_of_following_them() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        let hosts = dir.path().join("hosts");
        std::os::unix::fs::symlink(&victim, &hosts).unwrap();
        write_replacing(&hosts, b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        assert_eq!(std::fs::read_to_string(&hosts).unwrap(), "new");
        assert!(!std::fs::symlink_metadata(&hosts).unwrap().is_symlink());
    }

    #[test]
    fn dns_flags_rebuild_resolv_conf_as_docker_does() {
        let base = "search example.org\nnameserver 10.0.0.2\noptions ndots:1\n".to_string();
        assert_eq!(with_dns(base.clone(), &Dns::default()), base);
        let dns = Dns::parse(&["1.1.1.1".into(), "::1".into()], &[], &["edns0".into()]).unwrap();
        assert_eq!(
            with_dns(base.clone(), &dns),
            "nameserver 1.1.1.1\nnameserver ::1\nsearch example.org\noptions edns0\n"
        );
        let dns = Dns::parse(&[], &[".".into()], &[]).unwrap();
        assert_eq!(
            with_dns(base, &dns),
            "nameserver 10.0.0.2\noptions ndots:1\n"
        );
        assert!(Dns::parse(&["nope".into()], &[], &[]).is_err());
    }

    #[test]
    fn add_host_takes_dockers_syntax() {
        use crate::spec::HostEntry;
        let entry: HostEntry = "db:10.0.0.5".parse().unwrap();
        assert_eq!(
            (entry.name.as_str(), entry.address.to_string().as_str()),
            ("db", "10.0.0.5")
        );
        let entry: HostEntry = "v6:2001:db8::1".parse().unwrap();
        assert_eq!(entry.address.to_string(), "2001:db8::1");
        assert_eq!(
            "foo".parse::<HostEntry>().unwrap_err().to_string(),
            "bad format for add-host: \"foo\""
        );
        assert_eq!(
            "foo:bar".parse::<HostEntry>().unwrap_err().to_string(),
            "invalid IP address in add-host: \"bar\""
        );
        assert!("gw:host-gateway".parse::<HostEntry>().is_err());
    }

    #[test]
    fn resolv_conf_drops_loopback_resolvers_in_a_private_network() {
        let host = "search example.org\nnameserver 127.0.0.53\nnameserver 10.0.0.2\n";
        assert_eq!(
            resolv_conf(Network::None, Some(host.into())),
            "search example.org\nnameserver 10.0.0.2\n"
        );
        assert_eq!(resolv_conf(Network::Host, Some(host.into())), host);
        assert_eq!(
            resolv_conf(Network::None, Some("nameserver 127.0.0.1\n".into())),
            DEFAULT_NAMESERVERS
        );
        assert_eq!(resolv_conf(Network::None, None), DEFAULT_NAMESERVERS);
    }
}
