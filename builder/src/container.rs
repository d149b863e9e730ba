//! What a container runs, from an image config and the `run` options, by Docker's rules:
//! arguments after the image replace CMD; `--entrypoint` replaces ENTRYPOINT and resets CMD;
//! `-e` overrides the image's environment; `-w`, `-u`, `-h` override WorkingDir, User and the
//! hostname.

use kiln_cache::container::ContainerConfig;
use kiln_cache::image::ImageConfig;

/// The default PATH Docker gives a container whose image sets none.
pub use kiln_runtime::DEFAULT_PATH;

/// The `run`/`create` options that shape the process.
#[derive(Debug, Clone, Default)]
pub struct ProcessOptions {
    /// The image as the user named it.
    pub image_name: String,
    /// Arguments after the image name (replace CMD).
    pub args: Vec<String>,
    /// `--entrypoint`: `Some("")` clears the image's entrypoint.
    pub entrypoint: Option<String>,
    /// `-e NAME=VALUE` (or `NAME`, taken from kiln's own environment), in order.
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub hostname: Option<String>,
    /// `none` or `host`.
    pub network: String,
    pub labels: Vec<(String, String)>,
    pub auto_remove: bool,
    pub read_only: bool,
}

/// Why a container cannot be configured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProcessError {
    #[error(
        "no command specified: the image has no ENTRYPOINT or CMD; give one after the image name"
    )]
    NoCommand,
}

/// Combines the image config with the options. `host_env` looks up `-e NAME` without a value.
pub fn process_config(
    image: &ImageConfig,
    options: &ProcessOptions,
    host_env: &dyn Fn(&str) -> Option<String>,
) -> Result<ContainerConfig, ProcessError> {
    let config = &image.config;
    let entrypoint: Vec<String> = match &options.entrypoint {
        Some(entrypoint) if entrypoint.is_empty() => Vec::new(),
        Some(entrypoint) => vec![entrypoint.clone()],
        None => config.entrypoint.clone().unwrap_or_default(),
    };
    let cmd: Vec<String> = if !options.args.is_empty() {
        options.args.clone()
    } else if options.entrypoint.is_some() {
        Vec::new()
    } else {
        config.cmd.clone().unwrap_or_default()
    };
    let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if args.is_empty() {
        return Err(ProcessError::NoCommand);
    }
    let mut env: Vec<String> = config.env.clone().unwrap_or_default();
    let mut set = |pair: String| {
        let name = pair
            .split_once('=')
            .map_or(pair.as_str(), |(name, _)| name)
            .to_string();
        env.retain(|existing| {
            existing
                .split_once('=')
                .map_or(existing.as_str(), |(n, _)| n)
                != name
        });
        env.push(pair);
    };
    for pair in &options.env {
        match pair.split_once('=') {
            Some(_) => set(pair.clone()),
            None => {
                if let Some(value) = host_env(pair) {
                    set(format!("{pair}={value}"));
                }
            }
        }
    }
    if !env.iter().any(|pair| pair.starts_with("PATH=")) {
        env.insert(0, format!("PATH={DEFAULT_PATH}"));
    }
    let working_dir = options
        .working_dir
        .clone()
        .or_else(|| config.working_dir.clone().filter(|dir| !dir.is_empty()))
        .unwrap_or_else(|| "/".to_string());
    let user = options
        .user
        .clone()
        .or_else(|| config.user.clone())
        .unwrap_or_default();
    Ok(ContainerConfig {
        args,
        env,
        working_dir,
        user,
        hostname: options.hostname.clone().unwrap_or_default(),
        network: if options.network.is_empty() {
            "none".to_string()
        } else {
            options.network.clone()
        },
        image_name: options.image_name.clone(),
        labels: config
            .labels
            .clone()
            .unwrap_or_default()
            .into_iter()
            .chain(options.labels.iter().cloned())
            .collect(),
        auto_remove: options.auto_remove,
        read_only: options.read_only,
        // Mounts and network files are the CLI's to resolve (volumes live in the store).
        ..ContainerConfig::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_cache::image::ContainerConfig as ImageRuntime;

    fn image(entrypoint: Option<&[&str]>, cmd: Option<&[&str]>) -> ImageConfig {
        let strings = |list: &[&str]| list.iter().map(|s| s.to_string()).collect();
        ImageConfig {
            config: ImageRuntime {
                entrypoint: entrypoint.map(strings),
                cmd: cmd.map(strings),
                env: Some(vec!["A=1".into(), "PATH=/bin".into()]),
                working_dir: Some("/srv".into()),
                user: Some("app".into()),
                ..ImageRuntime::default()
            },
            ..ImageConfig::default()
        }
    }

    fn args(image: &ImageConfig, options: ProcessOptions) -> Vec<String> {
        process_config(image, &options, &|_| None).unwrap().args
    }

    #[test]
    fn arguments_replace_cmd_and_keep_the_entrypoint() {
        let image = image(Some(&["ls", "-a"]), Some(&["/etc"]));
        assert_eq!(
            args(&image, ProcessOptions::default()),
            ["ls", "-a", "/etc"]
        );
        let options = ProcessOptions {
            args: vec!["-l".into()],
            ..ProcessOptions::default()
        };
        assert_eq!(args(&image, options), ["ls", "-a", "-l"]);
    }

    #[test]
    fn an_entrypoint_option_resets_cmd() {
        let image = image(Some(&["ls"]), Some(&["/etc"]));
        let options = ProcessOptions {
            entrypoint: Some("cat".into()),
            ..ProcessOptions::default()
        };
        assert_eq!(args(&image, options), ["cat"]);
        let options = ProcessOptions {
            entrypoint: Some(String::new()),
            args: vec!["echo".into(), "hi".into()],
            ..ProcessOptions::default()
        };
        assert_eq!(args(&image, options), ["echo", "hi"]);
    }

    #[test]
    fn no_command_is_an_error() {
        let image = image(None, None);
        assert_eq!(
            process_config(&image, &ProcessOptions::default(), &|_| None),
            Err(ProcessError::NoCommand)
        );
    }

    #[test]
    fn environment_and_overrides() {
        let image = image(None, Some(&["sh"]));
        let options = ProcessOptions {
            env: vec!["A=2".into(), "FROM_HOST".into(), "MISSING".into()],
            working_dir: Some("/tmp".into()),
            ..ProcessOptions::default()
        };
        let config = process_config(&image, &options, &|name| {
            (name == "FROM_HOST").then(|| "h".to_string())
        })
        .unwrap();
        assert_eq!(config.env, ["PATH=/bin", "A=2", "FROM_HOST=h"]);
        assert_eq!(config.working_dir, "/tmp");
        assert_eq!(config.user, "app");
        let bare = ImageConfig {
            config: ImageRuntime {
                cmd: Some(vec!["sh".into()]),
                ..ImageRuntime::default()
            },
            ..ImageConfig::default()
        };
        let config = process_config(&bare, &ProcessOptions::default(), &|_| None).unwrap();
        assert_eq!(config.env, [format!("PATH={DEFAULT_PATH}")]);
        assert_eq!(config.working_dir, "/");
    }
}
