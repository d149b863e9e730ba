//! Platforms (`linux/amd64`, `linux/arm/v7`) and the choice of an image in an index, as Docker
//! makes it: the wanted OS and architecture must match, and the variant too when one is wanted
//! (`arm64` without a variant matches `v8`).

use kiln_cache::image::Descriptor;

use crate::error::RegistryError;

/// An OS, architecture and optional variant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// This machine's platform (`linux/amd64` here).
    pub fn host() -> Platform {
        Platform {
            os: "linux".to_string(),
            architecture: kiln_cache::import::host_architecture().to_string(),
            variant: None,
        }
    }

    /// Parses `OS/ARCH[/VARIANT]` (or a bare `ARCH`, taken as linux's), normalising
    /// architecture aliases as containerd does (`x86_64` → `amd64`, `aarch64` → `arm64`).
    pub fn parse(text: &str) -> Result<Platform, RegistryError> {
        let lower = text.trim().to_ascii_lowercase();
        let parts: Vec<&str> = lower.split('/').collect();
        let invalid = || RegistryError::InvalidPlatform(text.to_string());
        let (os, architecture, variant) = match parts.as_slice() {
            [architecture] if !architecture.is_empty() => ("linux", *architecture, None),
            [os, architecture] if !os.is_empty() && !architecture.is_empty() => {
                (*os, *architecture, None)
            }
            [os, architecture, variant]
                if !os.is_empty() && !architecture.is_empty() && !variant.is_empty() =>
            {
                (*os, *architecture, Some(*variant))
            }
            _ => return Err(invalid()),
        };
        let (architecture, variant) = match (architecture, variant) {
            ("x86_64" | "x86-64", variant) => ("amd64", variant),
            ("aarch64", variant) => ("arm64", variant),
            ("armhf", None) => ("arm", Some("v7")),
            ("armel", None) => ("arm", Some("v6")),
            (architecture, variant) => (architecture, variant),
        };
        Ok(Platform {
            os: os.to_string(),
            architecture: architecture.to_string(),
            variant: variant.map(str::to_string),
        })
    }

    /// Whether an index entry is for this platform.
    pub fn matches(&self, descriptor: &Descriptor) -> bool {
        let Some(platform) = &descriptor.platform else {
            return false;
        };
        if platform.os != self.os || platform.architecture != self.architecture {
            return false;
        }
        match (&self.variant, platform.variant.as_deref()) {
            (None, _) => true,
            (Some(wanted), Some(found)) => wanted == found,
            // arm64 images usually carry no variant: it means v8.
            (Some(wanted), None) => self.architecture == "arm64" && wanted == "v8",
        }
    }

    /// The index entry to pull for this platform: the first that matches, preferring one with
    /// the exact variant.
    pub fn select<'a>(&self, manifests: &'a [Descriptor]) -> Result<&'a Descriptor, RegistryError> {
        manifests
            .iter()
            .find(|descriptor| self.matches(descriptor))
            .ok_or_else(|| RegistryError::NoPlatform {
                platform: self.to_string(),
            })
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_cache::digest::Digest;

    fn entry(os: &str, architecture: &str, variant: Option<&str>) -> Descriptor {
        let mut descriptor = Descriptor::new(
            kiln_cache::image::MEDIA_TYPE_OCI_MANIFEST,
            Digest::of(format!("{os}{architecture}{variant:?}").as_bytes()),
            1,
        );
        descriptor.platform = Some(kiln_cache::image::Platform {
            architecture: architecture.to_string(),
            os: os.to_string(),
            variant: variant.map(str::to_string),
            os_version: None,
        });
        descriptor
    }

    #[test]
    fn platforms_parse_with_docker_aliases() {
        assert_eq!(
            Platform::parse("linux/x86_64").unwrap().to_string(),
            "linux/amd64"
        );
        assert_eq!(Platform::parse("arm64").unwrap().to_string(), "linux/arm64");
        assert_eq!(
            Platform::parse("linux/arm/v7").unwrap().to_string(),
            "linux/arm/v7"
        );
        assert!(Platform::parse("linux/").is_err());
        assert!(Platform::parse("a/b/c/d").is_err());
    }

    #[test]
    fn selection_matches_os_architecture_and_variant() {
        let manifests = vec![
            entry("linux", "arm", Some("v6")),
            entry("linux", "arm", Some("v7")),
            entry("linux", "arm64", None),
            entry("linux", "amd64", None),
            entry("windows", "amd64", None),
        ];
        let pick = |text: &str| {
            Platform::parse(text)
                .unwrap()
                .select(&manifests)
                .map(|descriptor| descriptor.digest)
        };
        assert_eq!(pick("linux/amd64").unwrap(), manifests[3].digest);
        assert_eq!(pick("linux/arm/v7").unwrap(), manifests[1].digest);
        assert_eq!(pick("linux/arm64/v8").unwrap(), manifests[2].digest);
        assert_eq!(pick("windows/amd64").unwrap(), manifests[4].digest);
        let error = pick("linux/s390x").unwrap_err();
        assert_eq!(
            error.to_string(),
            "no matching manifest for linux/s390x in the manifest list entries"
        );
    }
}
