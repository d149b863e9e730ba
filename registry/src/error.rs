//! Why talking to a registry failed. Every variant about the network names the registry.

use std::io;
use std::path::PathBuf;

use kiln_cache::blob::BlobError;
use kiln_cache::digest::Digest;
use kiln_cache::layer::LayerError;
use kiln_cache::store::StoreError;

/// A registry problem.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry could not be reached at all (unknown host, refused connection, TLS).
    #[error("cannot reach registry {registry}")]
    Connect {
        registry: String,
        #[source]
        source: Box<ureq::Error>,
    },
    /// 401: no credentials, or the registry (or its token server) refused them.
    #[error("{registry}: unauthorized: {message}")]
    Unauthorized { registry: String, message: String },
    /// 403: the credentials are fine but do not allow this.
    #[error("{registry}: denied: {message}")]
    Denied { registry: String, message: String },
    /// A manifest or tag the registry does not have.
    #[error("manifest for {reference} not found: manifest unknown")]
    ManifestUnknown { reference: String },
    /// The repository is not on the registry (listing tags).
    #[error("{registry}: repository {repository} not found")]
    RepositoryUnknown {
        registry: String,
        repository: String,
    },
    /// Any other answer the protocol does not allow here.
    #[error("{registry}: {method} {url}: unexpected status {status}{}", message_suffix(.message))]
    Status {
        registry: String,
        method: &'static str,
        url: String,
        status: u16,
        message: String,
    },
    /// The registry answered with something that is not what it should be.
    #[error("{registry}: {what}")]
    Protocol { registry: String, what: String },
    /// The token server's answer could not be used.
    #[error("{registry}: token server {realm}: {what}")]
    Token {
        registry: String,
        realm: String,
        what: String,
    },
    /// Content from the registry does not hash to the digest that names it.
    #[error("{what} {expected} from {registry} is corrupt: its content hashes to {actual}")]
    DigestMismatch {
        registry: String,
        what: &'static str,
        expected: Digest,
        actual: Digest,
    },
    /// Content from the registry does not have the size its descriptor says.
    #[error(
        "{what} {expected} from {registry} has {actual} bytes, not the {size} its descriptor says"
    )]
    SizeMismatch {
        registry: String,
        what: &'static str,
        expected: Digest,
        size: u64,
        actual: u64,
    },
    /// A layer whose uncompressed content is not the one the image config names.
    #[error("layer {blob} has diff ID {actual}, but the image config expects {expected}")]
    DiffIdMismatch {
        blob: Digest,
        expected: Digest,
        actual: Digest,
    },
    /// The config lists another number of layers than the manifest.
    #[error("image {image}: the manifest has {layers} layers but the config {diff_ids} diff IDs")]
    LayerCount {
        image: Digest,
        layers: usize,
        diff_ids: usize,
    },
    /// A manifest, config or layer of a kind kiln cannot use.
    #[error("{digest}: unsupported media type {media_type}")]
    MediaType { digest: String, media_type: String },
    /// An index without an image for the platform wanted.
    #[error("no matching manifest for {platform} in the manifest list entries")]
    NoPlatform { platform: String },
    /// A platform given on the command line that does not parse.
    #[error("invalid platform {0:?}: expected OS/ARCH[/VARIANT]")]
    InvalidPlatform(String),
    /// JSON from the registry that is not of the expected shape.
    #[error("{what} from {registry} is not valid JSON of the expected shape")]
    Json {
        registry: String,
        what: String,
        #[source]
        source: serde_json::Error,
    },
    /// A descriptor in a manifest holds a digest kiln cannot store.
    #[error("{registry}: invalid digest in the manifest")]
    Digest {
        registry: String,
        #[source]
        source: kiln_cache::digest::DigestError,
    },
    /// A layer blob that is not a layer kiln can unpack (hostile or corrupt archives too).
    #[error("layer {blob}")]
    Layer {
        blob: Digest,
        #[source]
        source: LayerError,
    },
    /// Reading a stream from the registry failed part way.
    #[error("{registry}: reading {what}")]
    Read {
        registry: String,
        what: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An image to push, or a reference to pull, that is not valid.
    #[error(transparent)]
    Reference(#[from] kiln_cache::reference::ReferenceError),
    /// `kiln push` of a name the store has no image for.
    #[error("An image does not exist locally with the tag: {0}")]
    NoSuchImage(String),
    /// `kiln push NAME@DIGEST`: a digest names content, it cannot be pushed to.
    #[error("cannot push a digest reference: {0}")]
    DigestReference(String),
    /// A reference that has no registry domain (a Docker quirk: `foo_bar.com/app`).
    #[error("{0}: the reference names no registry")]
    NoRegistry(String),
    /// `--pull never` and the image is not in the store.
    #[error("no such image: {0} (and pulling is disabled)")]
    NotPulled(String),
    /// The Docker client configuration could not be read or written.
    #[error("docker client configuration {path}")]
    Config {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The Docker client configuration is not valid JSON of the expected shape.
    #[error("docker client configuration {path} is not valid")]
    ConfigJson {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A credential helper (`docker-credential-NAME`) failed.
    #[error("credential helper docker-credential-{helper}: {what}")]
    Helper { helper: String, what: String },
}

fn message_suffix(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    }
}

impl From<BlobError> for RegistryError {
    fn from(error: BlobError) -> Self {
        RegistryError::Store(StoreError::Blob(error))
    }
}

/// The registry's own explanation of an error response: the `errors` array of the
/// distribution spec (`{"errors":[{"code":"UNAUTHORIZED","message":"..."}]}`), joined as Docker
/// shows it (`unauthorized: authentication required`), or the start of the body otherwise.
pub(crate) fn error_message(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<ErrorItem>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorItem {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    if let Ok(errors) = serde_json::from_slice::<Errors>(body)
        && !errors.errors.is_empty()
    {
        return errors
            .errors
            .iter()
            .map(
                |item| match (item.code.is_empty(), item.message.is_empty()) {
                    (false, false) => format!("{}: {}", item.code.to_lowercase(), item.message),
                    (false, true) => item.code.to_lowercase(),
                    (true, _) => item.message.clone(),
                },
            )
            .collect::<Vec<_>>()
            .join("; ");
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    text.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_read_as_docker_shows_them() {
        let body = br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":null}]}"#;
        assert_eq!(error_message(body), "unauthorized: authentication required");
        assert_eq!(error_message(b"  plain text\n"), "plain text");
        assert_eq!(error_message(b""), "");
    }
}
