//! What pull and push report as they go, for the CLI to render (Docker's per-layer lines).
//! Libraries never print: they send [`Event`]s to a [`Progress`].

use kiln_cache::digest::Digest;

/// Something that happened during a pull or a push. Layers are named by their blob digest;
/// Docker shows its first 12 hex digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A pull started: `TAG: Pulling from REPOSITORY` (the tag or digest, the repository path).
    PullingFrom { tag: String, repository: String },
    /// A layer the store already has (`Already exists`).
    LayerExists(Digest),
    /// A layer download started (`Pulling fs layer`).
    LayerPulling(Digest),
    /// A layer was downloaded, verified and unpacked (`Pull complete`).
    LayerPulled(Digest),
    /// A push started: `The push refers to repository [NAME]`.
    PushingTo { repository: String },
    /// A layer push is about to start (`Preparing`).
    LayerPreparing(Digest),
    /// The registry had the layer already (`Layer already exists`).
    LayerPresent(Digest),
    /// The registry mounted the layer from another repository (`Mounted from REPO`).
    LayerMounted { layer: Digest, from: String },
    /// The layer was uploaded (`Pushed`).
    LayerPushed(Digest),
    /// A foreign (non-distributable) layer that is not pushed, as Docker does.
    LayerSkipped(Digest),
}

/// Receives [`Event`]s, possibly from several threads at once.
pub trait Progress: Sync {
    fn event(&self, event: Event);
}

/// Ignores every event.
#[derive(Debug, Clone, Copy, Default)]
pub struct Silent;

impl Progress for Silent {
    fn event(&self, _event: Event) {}
}

/// Collects events in memory (for tests and callers that render at the end).
#[derive(Debug, Default)]
pub struct Recorded(pub std::sync::Mutex<Vec<Event>>);

impl Progress for Recorded {
    fn event(&self, event: Event) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(event);
    }
}

impl Recorded {
    /// The events so far.
    pub fn events(&self) -> Vec<Event> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}
