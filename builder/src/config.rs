//! How Dockerfile instructions that make no layer change an image's runtime config: CMD,
//! ENTRYPOINT, ENV, EXPOSE, LABEL, ONBUILD, STOPSIGNAL, USER, VOLUME, WORKDIR, HEALTHCHECK,
//! SHELL. Used for `kiln import -c` / `commit -c` changes and by the build for the same
//! instructions. Words expand against the config's own environment, as Docker does.

use std::collections::BTreeMap;

use kiln_cache::image::{ContainerConfig, Healthcheck};
use kiln_parser::ast::{
    CommandLine, Healthcheck as HealthcheckInstruction, Instruction, Statement,
};
use kiln_parser::expand::{ExpandError, Lexer};

/// Why an instruction cannot change a config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "{0} cannot be used here: only CMD, ENTRYPOINT, ENV, EXPOSE, HEALTHCHECK, LABEL, ONBUILD, SHELL, STOPSIGNAL, USER, VOLUME and WORKDIR change an image's config"
    )]
    NotAConfigInstruction(String),
    #[error("failed to process {word:?}: {source}")]
    Expand {
        word: String,
        #[source]
        source: ExpandError,
    },
    #[error(
        "invalid port {0:?}: expected PORT[/PROTOCOL] or START-END[/PROTOCOL] with tcp, udp or sctp"
    )]
    InvalidPort(String),
}

/// The shell Docker uses for shell-form commands when the image sets none.
const DEFAULT_SHELL: [&str; 2] = ["/bin/sh", "-c"];

/// Applies one config instruction to `config`. `escape` is the Dockerfile's escape character.
pub fn apply(
    config: &mut ContainerConfig,
    statement: &Statement,
    escape: char,
) -> Result<(), ConfigError> {
    apply_with_args(config, statement, escape, &BTreeMap::new())
}

/// [`apply`] in a build stage: words also see the stage's build arguments (`args`), which the
/// config's own environment overrides, as in Docker (an ENV beats an ARG of the same name).
pub fn apply_with_args(
    config: &mut ContainerConfig,
    statement: &Statement,
    escape: char,
    args: &BTreeMap<String, String>,
) -> Result<(), ConfigError> {
    let lexer = Lexer::new(escape);
    let mut env: BTreeMap<String, String> = args.clone();
    env.extend(
        config
            .env
            .iter()
            .flatten()
            .filter_map(|pair| pair.split_once('='))
            .map(|(name, value)| (name.to_string(), value.to_string())),
    );
    let expand = |word: &str| {
        lexer
            .expand_word(word, &env)
            .map(|expansion| expansion.value)
            .map_err(|source| ConfigError::Expand {
                word: word.to_string(),
                source,
            })
    };
    let expand_words = |word: &str| {
        lexer
            .expand_words(word, &env)
            .map(|expansion| expansion.words)
            .map_err(|source| ConfigError::Expand {
                word: word.to_string(),
                source,
            })
    };
    match &statement.instruction {
        Instruction::Cmd(command) => {
            config.cmd = Some(command_vector(config, command));
            config.args_escaped = None;
        }
        Instruction::Entrypoint(command) => {
            config.entrypoint = Some(command_vector(config, command));
            // Setting ENTRYPOINT resets a CMD inherited from the base image (Dockerfile reference).
            config.cmd = None;
        }
        Instruction::Env(pairs) => {
            let mut list = config.env.take().unwrap_or_default();
            let mut visible = env.clone();
            for pair in &pairs.pairs {
                let key = lexer
                    .expand_word(&pair.key.text, &visible)
                    .map_err(|source| ConfigError::Expand {
                        word: pair.key.text.clone(),
                        source,
                    })?
                    .value;
                // Values of one ENV line expand against the environment before that line.
                let value = expand(&pair.value.text)?;
                list.retain(|existing| {
                    existing.split_once('=').is_none_or(|(name, _)| name != key)
                });
                list.push(format!("{key}={value}"));
                visible.insert(key, value);
            }
            config.env = Some(list);
        }
        Instruction::Label(pairs) => {
            let labels = config.labels.get_or_insert_with(BTreeMap::new);
            for pair in &pairs.pairs {
                labels.insert(expand(&pair.key.text)?, expand(&pair.value.text)?);
            }
        }
        Instruction::Expose(expose) => {
            let ports = config.exposed_ports.get_or_insert_with(BTreeMap::new);
            for word in &expose.ports {
                for port in expand_words(&word.text)? {
                    for spec in port_specs(&port)? {
                        ports.insert(spec, serde_json::json!({}));
                    }
                }
            }
        }
        Instruction::Volume(volume) => {
            let volumes = config.volumes.get_or_insert_with(BTreeMap::new);
            for path in &volume.paths {
                let expanded = if volume.json {
                    vec![expand(&path.text)?]
                } else {
                    expand_words(&path.text)?
                };
                for path in expanded {
                    volumes.insert(path, serde_json::json!({}));
                }
            }
        }
        Instruction::User(user) => config.user = Some(expand(&user.text)?),
        Instruction::Workdir(path) => {
            let path = expand(&path.text)?;
            let base = config
                .working_dir
                .clone()
                .unwrap_or_else(|| "/".to_string());
            config.working_dir = Some(join_workdir(&base, &path));
        }
        Instruction::Stopsignal(signal) => config.stop_signal = Some(expand(&signal.text)?),
        Instruction::Onbuild(onbuild) => {
            config
                .on_build
                .get_or_insert_with(Vec::new)
                .push(onbuild.expression.clone());
        }
        Instruction::Shell(shell) => {
            config.shell = Some(shell.shell.iter().map(|word| word.text.clone()).collect());
        }
        Instruction::Healthcheck(HealthcheckInstruction::None) => {
            config.healthcheck = Some(Healthcheck {
                test: vec!["NONE".to_string()],
                ..Healthcheck::default()
            });
        }
        Instruction::Healthcheck(HealthcheckInstruction::Check(check)) => {
            let test = match &check.command {
                CommandLine::Exec(words) => std::iter::once("CMD".to_string())
                    .chain(words.iter().map(|word| word.text.clone()))
                    .collect(),
                CommandLine::Shell(text) => vec!["CMD-SHELL".to_string(), text.text.clone()],
            };
            let nanos =
                |duration: Option<std::time::Duration>| duration.map(|d| d.as_nanos() as u64);
            config.healthcheck = Some(Healthcheck {
                test,
                interval: nanos(check.interval),
                timeout: nanos(check.timeout),
                start_period: nanos(check.start_period),
                start_interval: nanos(check.start_interval),
                retries: check.retries,
            });
        }
        Instruction::From(_)
        | Instruction::Run(_)
        | Instruction::Maintainer(_)
        | Instruction::Add(_)
        | Instruction::Copy(_)
        | Instruction::Arg(_) => {
            return Err(ConfigError::NotAConfigInstruction(
                statement.name().to_ascii_uppercase(),
            ));
        }
    }
    Ok(())
}

/// Exec form as is; shell form wrapped in the image's SHELL (default `/bin/sh -c`).
pub(crate) fn command_vector(config: &ContainerConfig, command: &CommandLine) -> Vec<String> {
    match command {
        CommandLine::Exec(words) => words.iter().map(|word| word.text.clone()).collect(),
        CommandLine::Shell(text) => {
            let mut vector: Vec<String> = match &config.shell {
                Some(shell) if !shell.is_empty() => shell.clone(),
                _ => DEFAULT_SHELL.iter().map(|part| part.to_string()).collect(),
            };
            vector.push(text.text.clone());
            vector
        }
    }
}

/// WORKDIR as BuildKit records it: an absolute path as written (a trailing slash kept), a
/// relative one joined to the previous one and cleaned as Go's `path.Join` does.
fn join_workdir(base: &str, path: &str) -> String {
    if path.starts_with('/') {
        path.to_string()
    } else {
        kiln_parser::path::clean(&format!("/{base}/{path}"))
    }
}

/// `80`, `80/udp`, `8000-8002/tcp` → `80/tcp`, `80/udp`, `8000/tcp`, `8001/tcp`, `8002/tcp`.
fn port_specs(spec: &str) -> Result<Vec<String>, ConfigError> {
    let invalid = || ConfigError::InvalidPort(spec.to_string());
    let (ports, protocol) = match spec.split_once('/') {
        Some((ports, protocol)) => (ports, protocol.to_ascii_lowercase()),
        None => (spec, "tcp".to_string()),
    };
    if !matches!(protocol.as_str(), "tcp" | "udp" | "sctp") {
        return Err(invalid());
    }
    let parse = |text: &str| text.parse::<u16>().map_err(|_| invalid());
    let (start, end) = match ports.split_once('-') {
        Some((start, end)) => (parse(start)?, parse(end)?),
        None => {
            let port = parse(ports)?;
            (port, port)
        }
    };
    if start > end {
        return Err(invalid());
    }
    Ok((start..=end)
        .map(|port| format!("{port}/{protocol}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply_all(lines: &str) -> ContainerConfig {
        let dockerfile = kiln_parser::parse(&format!("FROM scratch\n{lines}")).unwrap();
        let mut config = ContainerConfig::default();
        for statement in &dockerfile.statements[1..] {
            apply(&mut config, statement, '\\').unwrap();
        }
        config
    }

    #[test]
    fn shell_form_commands_are_wrapped_in_the_shell() {
        let config = apply_all("CMD echo hi\n");
        assert_eq!(config.cmd.unwrap(), ["/bin/sh", "-c", "echo hi"]);
        let config = apply_all("SHELL [\"/bin/bash\", \"-c\"]\nCMD [\"a\"]\nENTRYPOINT run it\n");
        assert_eq!(config.entrypoint.unwrap(), ["/bin/bash", "-c", "run it"]);
        assert_eq!(config.cmd, None, "ENTRYPOINT resets CMD");
    }

    #[test]
    fn env_values_expand_against_the_environment_before_the_line() {
        let config = apply_all("ENV A=1\nENV A=2 B=$A\nENV C=${A}x\n");
        assert_eq!(config.env.unwrap(), ["A=2", "B=1", "C=2x"]);
    }

    #[test]
    fn expose_volume_workdir_label_user_stopsignal() {
        let config = apply_all(
            "ENV P=90\nEXPOSE 80 53/UDP 8000-8002 $P\nVOLUME /a /b\nVOLUME [\"/c d\"]\nWORKDIR /srv\nWORKDIR app/../web\nLABEL a=b \"c d\"=e\nUSER app\nSTOPSIGNAL SIGINT\n",
        );
        let ports: Vec<_> = config.exposed_ports.unwrap().into_keys().collect();
        assert_eq!(
            ports,
            [
                "53/udp", "80/tcp", "8000/tcp", "8001/tcp", "8002/tcp", "90/tcp"
            ]
        );
        let volumes: Vec<_> = config.volumes.unwrap().into_keys().collect();
        assert_eq!(volumes, ["/a", "/b", "/c d"]);
        assert_eq!(config.working_dir.unwrap(), "/srv/web");
        assert_eq!(
            config.labels.unwrap().get("c d").map(String::as_str),
            Some("e")
        );
        assert_eq!(config.user.unwrap(), "app");
        assert_eq!(config.stop_signal.unwrap(), "SIGINT");
    }

    #[test]
    fn healthcheck_is_stored_in_nanoseconds() {
        let config =
            apply_all("HEALTHCHECK --interval=5s --retries=2 CMD curl -f http://localhost/\n");
        let check = config.healthcheck.unwrap();
        assert_eq!(check.test, ["CMD-SHELL", "curl -f http://localhost/"]);
        assert_eq!(check.interval, Some(5_000_000_000));
        assert_eq!(check.retries, Some(2));
    }

    #[test]
    fn build_instructions_are_refused() {
        let dockerfile = kiln_parser::parse("FROM scratch\nRUN true\n").unwrap();
        let error = apply(
            &mut ContainerConfig::default(),
            &dockerfile.statements[1],
            '\\',
        )
        .unwrap_err();
        assert!(matches!(error, ConfigError::NotAConfigInstruction(name) if name == "RUN"));
        assert!(port_specs("80/http").is_err());
        assert!(port_specs("9-1").is_err());
    }
}
