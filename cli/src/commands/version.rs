//! `kiln version` and `kiln info`.

use serde_json::{Value, json};

use super::{Global, open_store};
use crate::output;
use crate::{Exit, human};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Format the output using a Go template (`json` for JSON)
    #[arg(short = 'f', long)]
    format: Option<String>,
}

/// The kernel release (`uname -r`).
fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".to_string(), |text| text.trim().to_string())
}

/// `2` when a cgroup v2 hierarchy with controllers is mounted at /sys/fs/cgroup, else `1`.
fn cgroup_version() -> &'static str {
    let controllers =
        std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").unwrap_or_default();
    if controllers.trim().is_empty() {
        "1"
    } else {
        "2"
    }
}

fn print(format: Option<&str>, value: &Value, text: impl FnOnce() -> String) -> Exit {
    match format {
        None => {
            output::out(&text());
            Exit::Success
        }
        Some(format) => match kiln_template::Format::parse(format)
            .and_then(|format| format.template().render(value))
        {
            Ok(rendered) => {
                output::out(&format!("{rendered}\n"));
                Exit::Success
            }
            Err(error) => output::error(format!("template parsing error: {error}")),
        },
    }
}

pub fn version(args: Args) -> Exit {
    let value = json!({
        "Client": {
            "Version": env!("CARGO_PKG_VERSION"),
            "StoreVersion": kiln_cache::layout::STORE_VERSION,
            "Os": std::env::consts::OS,
            "Arch": kiln_cache::import::host_architecture(),
            "KernelVersion": kernel(),
            "CgroupVersion": cgroup_version(),
        }
    });
    print(args.format.as_deref(), &value, || {
        format!(
            "Client: kiln\n Version:         {}\n Store version:   {}\n OS/Arch:         {}/{}\n Kernel version:  {}\n Cgroup version:  {}\n",
            env!("CARGO_PKG_VERSION"),
            kiln_cache::layout::STORE_VERSION,
            std::env::consts::OS,
            kiln_cache::import::host_architecture(),
            kernel(),
            cgroup_version()
        )
    })
}

pub fn info(global: &Global, args: Args) -> Exit {
    let store = match open_store(global) {
        Ok(store) => store,
        Err(exit) => return exit,
    };
    let images = match store.images() {
        Ok(images) => images,
        Err(error) => return output::error_of(&error),
    };
    let root = store.layout().root().display().to_string();
    let used = kiln_cache::store::directory_size(store.layout().root());
    let value = json!({
        "Images": images.len(),
        "Containers": 0,
        "ContainersRunning": 0,
        "ContainersPaused": 0,
        "ContainersStopped": 0,
        "Driver": "overlay",
        "RootDir": root,
        "StoreSize": used,
        "StoreVersion": kiln_cache::layout::STORE_VERSION,
        "CgroupDriver": "cgroupfs",
        "CgroupVersion": cgroup_version(),
        "KernelVersion": kernel(),
        "OperatingSystem": std::env::consts::OS,
        "Architecture": std::env::consts::ARCH,
        "NCPU": std::thread::available_parallelism().map_or(1, |n| n.get()),
    });
    print(args.format.as_deref(), &value, || {
        format!(
            "Client: kiln {}\nServer: none (kiln has no daemon)\n Containers: 0\n  Running: 0\n  Paused: 0\n  Stopped: 0\n Images: {}\n Storage Driver: overlay\n Root Dir: {}\n Store Size: {}\n Store Version: {}\n Cgroup Driver: cgroupfs\n Cgroup Version: {}\n Kernel Version: {}\n Architecture: {}\n CPUs: {}\n",
            env!("CARGO_PKG_VERSION"),
            images.len(),
            root,
            human::size(used),
            kiln_cache::layout::STORE_VERSION,
            cgroup_version(),
            kernel(),
            std::env::consts::ARCH,
            value["NCPU"],
        )
    })
}
