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
    /// Bytes of a layer blob downloaded so far, of `total` (`Downloading [==>  ] 1MB/2MB` on
    /// a terminal): sent as the download goes, about every 1% and at the end.
    LayerDownloading {
        layer: Digest,
        current: u64,
        total: u64,
    },
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
    /// Bytes of a layer blob uploaded so far, of `total` (`Pushing [==>  ] 1MB/2MB` on a
    /// terminal): sent as the upload goes, about every 1% and at the end.
    LayerUploading {
        layer: Digest,
        current: u64,
        total: u64,
    },
    /// The layer was uploaded (`Pushed`).
    LayerPushed(Digest),
    /// A foreign (non-distributable) layer that is not pushed, as Docker does.
    LayerSkipped(Digest),
}

/// Receives [`Event`]s, possibly from several threads at once.
pub trait Progress: Sync {
    fn event(&self, event: Event);
}

/// Which way a [`Counting`] reader's bytes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transfer {
    /// From the registry: [`Event::LayerDownloading`].
    Download,
    /// To the registry: [`Event::LayerUploading`].
    Upload,
}

/// A reader of a layer blob that reports how many bytes went through it to a [`Progress`]:
/// after each 1% of `total` (at most every 100 ms) and when `total` is reached. It never
/// changes the bytes, and a read error is passed on untouched.
pub struct Counting<'a, R> {
    inner: R,
    layer: Digest,
    total: u64,
    current: u64,
    reported: u64,
    reported_at: Option<std::time::Instant>,
    transfer: Transfer,
    progress: &'a dyn Progress,
}

impl<R> std::fmt::Debug for Counting<'_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counting")
            .field("layer", &self.layer)
            .field("total", &self.total)
            .field("current", &self.current)
            .field("transfer", &self.transfer)
            .finish_non_exhaustive()
    }
}

impl<'a, R> Counting<'a, R> {
    /// Counts the bytes read from `inner`, the blob of `layer` of `total` bytes.
    pub fn new(
        inner: R,
        layer: Digest,
        total: u64,
        transfer: Transfer,
        progress: &'a dyn Progress,
    ) -> Self {
        Counting {
            inner,
            layer,
            total,
            current: 0,
            reported: 0,
            reported_at: None,
            transfer,
            progress,
        }
    }

    fn report(&mut self) {
        let step = (self.total / 100).max(1);
        let done = self.current >= self.total;
        let due = self.current - self.reported >= step
            && self
                .reported_at
                .is_none_or(|at| at.elapsed() >= std::time::Duration::from_millis(100));
        if self.current == self.reported || !(done || due) {
            return;
        }
        self.reported = self.current;
        self.reported_at = Some(std::time::Instant::now());
        let (layer, current, total) = (self.layer, self.current, self.total);
        self.progress.event(match self.transfer {
            Transfer::Download => Event::LayerDownloading {
                layer,
                current,
                total,
            },
            Transfer::Upload => Event::LayerUploading {
                layer,
                current,
                total,
            },
        });
    }
}

impl<R: std::io::Read> std::io::Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let read = self.inner.read(buf)?;
        self.current = self.current.saturating_add(read as u64);
        self.report();
        Ok(read)
    }
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

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    #[test]
    fn counting_reports_growing_totals_ending_with_the_whole_blob_and_keeps_the_bytes() {
        let data = vec![7u8; 10_000];
        let layer = Digest::of(&data);
        let recorded = Recorded::default();
        let mut reader = Counting::new(&data[..], layer, 10_000, Transfer::Download, &recorded);
        let mut copy = Vec::new();
        let mut buffer = [0u8; 64];
        loop {
            let read = reader.read(&mut buffer).unwrap();
            if read == 0 {
                break;
            }
            copy.extend_from_slice(&buffer[..read]);
        }
        assert_eq!(copy, data);
        let events = recorded.events();
        assert!(!events.is_empty());
        let mut last = 0;
        for event in &events {
            let Event::LayerDownloading {
                layer: seen,
                current,
                total,
            } = event
            else {
                panic!("unexpected {event:?}");
            };
            assert_eq!((*seen, *total), (layer, 10_000));
            assert!(*current > last, "{events:?}");
            last = *current;
        }
        assert_eq!(last, 10_000, "the last event is the whole blob");
        // The first 1% reports (nothing was reported before); the 100 ms throttle holds the
        // rest until the end.
        assert!(events.len() <= 3, "{events:?}");
    }
}
