//! The check configuration: which rules run and whether warnings fail the build. It comes from
//! the `# check=` parser directive, the `BUILDKIT_DOCKERFILE_CHECK` build argument, a `# check=`
//! comment right above one instruction, and the caller (the CLI).

use std::collections::BTreeSet;

use super::{LintError, Rule};

/// A set of rule names, or every rule. Names are kept as written: BuildKit accepts unknown names
/// in `skip=` and `experimental=` and ignores them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleSet {
    All,
    Only(BTreeSet<String>),
}

impl RuleSet {
    /// Whether the set names `rule`.
    pub fn contains(&self, rule: Rule) -> bool {
        match self {
            RuleSet::All => true,
            RuleSet::Only(names) => names.contains(rule.name()),
        }
    }

    fn parse(value: &str) -> RuleSet {
        let value = value.trim();
        if value == "all" {
            return RuleSet::All;
        }
        RuleSet::Only(
            value
                .split(',')
                .map(|rule| rule.trim().to_string())
                .collect(),
        )
    }
}

/// The settings of a `# check=` directive: `skip=Rule1,Rule2;error=true;experimental=Rule3`.
/// A field left `None` was not given, so that [`CheckConfig::merge`] can tell "not set" from a
/// value; `Default` is the empty configuration (every stable rule, warnings are not errors).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckConfig {
    /// `skip=`: rules not to run (`all` for none). Does not apply to experimental rules.
    pub skip: Option<RuleSet>,
    /// `error=`: warnings fail the build.
    pub error: Option<bool>,
    /// `experimental=`: experimental rules to run (`all` for every one).
    pub experimental: Option<RuleSet>,
}

impl CheckConfig {
    /// Parses the value of a `# check=` directive or of `BUILDKIT_DOCKERFILE_CHECK`, as BuildKit's
    /// `linter.ParseLintOptions` does: options separated by `;` (at most three: a third part
    /// keeps any further `;`), each `key=value` with the key one of `skip`, `error` and
    /// `experimental`; `error` takes Go's boolean spellings (`1`, `t`, `true`, `TRUE`, ...).
    /// An empty value is the empty configuration. Text from `//` on is a remark and is ignored
    /// (`skip=all // generated file`), as BuildKit allows since check comments were added.
    pub fn parse(value: &str) -> Result<CheckConfig, LintError> {
        let value = value.split_once("//").map_or(value, |(before, _)| before);
        let value = value.trim();
        let mut config = CheckConfig::default();
        if value.is_empty() {
            return Ok(config);
        }
        for part in value.splitn(3, ';') {
            let Some((key, option)) = part.split_once('=') else {
                return Err(LintError::MissingEquals(part.to_string()));
            };
            match key.trim() {
                "skip" => config.skip = Some(RuleSet::parse(option)),
                "experimental" => config.experimental = Some(RuleSet::parse(option)),
                "error" => {
                    let error = parse_go_bool(option.trim())
                        .ok_or_else(|| LintError::InvalidBoolean(part.to_string()))?;
                    config.error = Some(error);
                }
                other => return Err(LintError::UnknownOption(other.to_string())),
            }
        }
        Ok(config)
    }

    /// `other`'s settings over `self`'s: every field `other` sets replaces the one of `self`,
    /// the others are kept (`directive.merge(command_line)`).
    pub fn merge(self, other: CheckConfig) -> CheckConfig {
        CheckConfig {
            skip: other.skip.or(self.skip),
            error: other.error.or(self.error),
            experimental: other.experimental.or(self.experimental),
        }
    }

    /// Whether `rule` runs: an experimental rule when `experimental=` names it, any other rule
    /// unless `skip=` names it.
    pub fn is_enabled(&self, rule: Rule) -> bool {
        if rule.is_experimental() {
            self.experimental
                .as_ref()
                .is_some_and(|rules| rules.contains(rule))
        } else {
            !self.skip.as_ref().is_some_and(|rules| rules.contains(rule))
        }
    }

    /// True when the config says warnings are errors (`error=true`).
    pub fn warnings_are_errors(&self) -> bool {
        self.error.unwrap_or(false)
    }

    /// BuildKit's end-of-build check: with `error=true` and at least one warning, the error
    /// `lint violation found for rules: ...` (rules sorted, each once); otherwise `Ok`.
    pub fn enforce(&self, warnings: &[super::Warning]) -> Result<(), LintError> {
        if !self.warnings_are_errors() || warnings.is_empty() {
            return Ok(());
        }
        let rules: BTreeSet<&'static str> = warnings.iter().map(|warning| warning.rule).collect();
        Err(LintError::Violations(
            rules.into_iter().collect::<Vec<_>>().join(", "),
        ))
    }
}

/// Go's `strconv.ParseBool`.
fn parse_go_bool(value: &str) -> Option<bool> {
    match value {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}
