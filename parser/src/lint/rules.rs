//! The check rules BuildKit's Dockerfile frontend runs (`frontend/dockerfile/linter/ruleset.go`):
//! names, documentation links and which ones are experimental.

use std::fmt;

/// One check rule. The names are BuildKit's, as used in `# check=skip=...` and in reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rule {
    StageNameCasing,
    FromAsCasing,
    NoEmptyContinuation,
    ConsistentInstructionCasing,
    DuplicateStageName,
    ReservedStageName,
    JsonArgsRecommended,
    MaintainerDeprecated,
    UndefinedArgInFrom,
    WorkdirRelativePath,
    UndefinedVar,
    MultipleInstructionsDisallowed,
    LegacyKeyValueFormat,
    RedundantTargetPlatform,
    SecretsUsedInArgOrEnv,
    InvalidDefaultArgInFrom,
    FromPlatformFlagConstDisallowed,
    InvalidDefinitionDescription,
    ExposeProtoCasing,
    ExposeInvalidFormat,
    CopyIgnoredFile,
}

impl Rule {
    /// Every rule kiln implements, in BuildKit's ruleset order (CopyIgnoredFile, added later,
    /// last). CopyIgnoredFile runs only when the caller gives the context's `.dockerignore`
    /// ([`Rule::needs_context`]). Not implemented: InvalidBaseImagePlatform (needs the base
    /// image's metadata).
    pub const ALL: [Rule; 21] = [
        Rule::StageNameCasing,
        Rule::FromAsCasing,
        Rule::NoEmptyContinuation,
        Rule::ConsistentInstructionCasing,
        Rule::DuplicateStageName,
        Rule::ReservedStageName,
        Rule::JsonArgsRecommended,
        Rule::MaintainerDeprecated,
        Rule::UndefinedArgInFrom,
        Rule::WorkdirRelativePath,
        Rule::UndefinedVar,
        Rule::MultipleInstructionsDisallowed,
        Rule::LegacyKeyValueFormat,
        Rule::RedundantTargetPlatform,
        Rule::SecretsUsedInArgOrEnv,
        Rule::InvalidDefaultArgInFrom,
        Rule::FromPlatformFlagConstDisallowed,
        Rule::InvalidDefinitionDescription,
        Rule::ExposeProtoCasing,
        Rule::ExposeInvalidFormat,
        Rule::CopyIgnoredFile,
    ];

    /// BuildKit's name for the rule (`JSONArgsRecommended`).
    pub fn name(self) -> &'static str {
        match self {
            Rule::StageNameCasing => "StageNameCasing",
            Rule::FromAsCasing => "FromAsCasing",
            Rule::NoEmptyContinuation => "NoEmptyContinuation",
            Rule::ConsistentInstructionCasing => "ConsistentInstructionCasing",
            Rule::DuplicateStageName => "DuplicateStageName",
            Rule::ReservedStageName => "ReservedStageName",
            Rule::JsonArgsRecommended => "JSONArgsRecommended",
            Rule::MaintainerDeprecated => "MaintainerDeprecated",
            Rule::UndefinedArgInFrom => "UndefinedArgInFrom",
            Rule::WorkdirRelativePath => "WorkdirRelativePath",
            Rule::UndefinedVar => "UndefinedVar",
            Rule::MultipleInstructionsDisallowed => "MultipleInstructionsDisallowed",
            Rule::LegacyKeyValueFormat => "LegacyKeyValueFormat",
            Rule::RedundantTargetPlatform => "RedundantTargetPlatform",
            Rule::SecretsUsedInArgOrEnv => "SecretsUsedInArgOrEnv",
            Rule::InvalidDefaultArgInFrom => "InvalidDefaultArgInFrom",
            Rule::FromPlatformFlagConstDisallowed => "FromPlatformFlagConstDisallowed",
            Rule::InvalidDefinitionDescription => "InvalidDefinitionDescription",
            Rule::ExposeProtoCasing => "ExposeProtoCasing",
            Rule::ExposeInvalidFormat => "ExposeInvalidFormat",
            Rule::CopyIgnoredFile => "CopyIgnoredFile",
        }
    }

    /// The rule with this exact name, if kiln implements it.
    pub fn from_name(name: &str) -> Option<Rule> {
        Rule::ALL.into_iter().find(|rule| rule.name() == name)
    }

    /// The rule's documentation page, `https://docs.docker.com/go/dockerfile/rule/<name>/`.
    pub fn url(self) -> String {
        let slug = match self {
            Rule::StageNameCasing => "stage-name-casing",
            Rule::FromAsCasing => "from-as-casing",
            Rule::NoEmptyContinuation => "no-empty-continuation",
            Rule::ConsistentInstructionCasing => "consistent-instruction-casing",
            Rule::DuplicateStageName => "duplicate-stage-name",
            Rule::ReservedStageName => "reserved-stage-name",
            Rule::JsonArgsRecommended => "json-args-recommended",
            Rule::MaintainerDeprecated => "maintainer-deprecated",
            Rule::UndefinedArgInFrom => "undefined-arg-in-from",
            Rule::WorkdirRelativePath => "workdir-relative-path",
            Rule::UndefinedVar => "undefined-var",
            Rule::MultipleInstructionsDisallowed => "multiple-instructions-disallowed",
            Rule::LegacyKeyValueFormat => "legacy-key-value-format",
            Rule::RedundantTargetPlatform => "redundant-target-platform",
            Rule::SecretsUsedInArgOrEnv => "secrets-used-in-arg-or-env",
            Rule::InvalidDefaultArgInFrom => "invalid-default-arg-in-from",
            Rule::FromPlatformFlagConstDisallowed => "from-platform-flag-const-disallowed",
            Rule::InvalidDefinitionDescription => "invalid-definition-description",
            Rule::ExposeProtoCasing => "expose-proto-casing",
            Rule::ExposeInvalidFormat => "expose-invalid-format",
            Rule::CopyIgnoredFile => "copy-ignored-file",
        };
        format!("https://docs.docker.com/go/dockerfile/rule/{slug}/")
    }

    /// Experimental rules run only when `# check=experimental=...` names them (or `all`), and
    /// `skip=` does not apply to them, as in BuildKit's `Linter.Run`.
    pub fn is_experimental(self) -> bool {
        match self {
            Rule::InvalidDefinitionDescription => true,
            Rule::StageNameCasing
            | Rule::FromAsCasing
            | Rule::NoEmptyContinuation
            | Rule::ConsistentInstructionCasing
            | Rule::DuplicateStageName
            | Rule::ReservedStageName
            | Rule::JsonArgsRecommended
            | Rule::MaintainerDeprecated
            | Rule::UndefinedArgInFrom
            | Rule::WorkdirRelativePath
            | Rule::UndefinedVar
            | Rule::MultipleInstructionsDisallowed
            | Rule::LegacyKeyValueFormat
            | Rule::RedundantTargetPlatform
            | Rule::SecretsUsedInArgOrEnv
            | Rule::InvalidDefaultArgInFrom
            | Rule::FromPlatformFlagConstDisallowed
            | Rule::ExposeProtoCasing
            | Rule::ExposeInvalidFormat
            | Rule::CopyIgnoredFile => false,
        }
    }

    /// Rules that need something outside the Dockerfile from the caller (CopyIgnoredFile: the
    /// build context's `.dockerignore`, [`super::LintOptions::ignore`]); without it they never
    /// fire.
    pub fn needs_context(self) -> bool {
        matches!(self, Rule::CopyIgnoredFile)
    }

    /// BuildKit's one-line description of what the rule asks for.
    pub fn description(self) -> &'static str {
        match self {
            Rule::StageNameCasing => "Stage names should be lowercase",
            Rule::FromAsCasing => "The 'as' keyword should match the case of the 'from' keyword",
            Rule::NoEmptyContinuation => {
                "Empty continuation lines will become errors in a future release"
            }
            Rule::ConsistentInstructionCasing => {
                "All commands within the Dockerfile should use the same casing (either upper or lower)"
            }
            Rule::DuplicateStageName => "Stage names should be unique",
            Rule::ReservedStageName => "Reserved words should not be used as stage names",
            Rule::JsonArgsRecommended => {
                "JSON arguments recommended for ENTRYPOINT/CMD to prevent unintended behavior related to OS signals"
            }
            Rule::MaintainerDeprecated => {
                "The MAINTAINER instruction is deprecated, use a label instead to define an image author"
            }
            Rule::UndefinedArgInFrom => "FROM command must use declared ARGs",
            Rule::WorkdirRelativePath => {
                "Relative workdir without an absolute workdir declared within the build can have unexpected results if the base image changes"
            }
            Rule::UndefinedVar => "Variables should be defined before their use",
            Rule::MultipleInstructionsDisallowed => {
                "Multiple instructions of the same type should not be used in the same stage"
            }
            Rule::LegacyKeyValueFormat => {
                "Legacy key/value format with whitespace separator should not be used"
            }
            Rule::RedundantTargetPlatform => {
                "Setting platform to predefined $TARGETPLATFORM in FROM is redundant as this is the default behavior"
            }
            Rule::SecretsUsedInArgOrEnv => {
                "Sensitive data should not be used in the ARG or ENV commands"
            }
            Rule::InvalidDefaultArgInFrom => {
                "Default value for global ARG results in an empty or invalid base image name"
            }
            Rule::FromPlatformFlagConstDisallowed => {
                "FROM --platform flag should not use a constant value"
            }
            Rule::InvalidDefinitionDescription => {
                "Comment for build stage or argument should follow the format: `# <arg/stage name> <description>`. If this is not intended to be a description comment, add an empty line or comment between the instruction and the comment."
            }
            Rule::ExposeProtoCasing => "Protocol in EXPOSE instruction should be lowercase",
            Rule::ExposeInvalidFormat => {
                "IP address and host-port mapping should not be used in EXPOSE instruction. This will become an error in a future release"
            }
            Rule::CopyIgnoredFile => "Attempting to Copy file that is excluded by .dockerignore",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
