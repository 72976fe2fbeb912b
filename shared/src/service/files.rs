//! Where a process keeps files, and what bounds the work on them: part of the
//! [`AppState`](super::state::AppState), apart from [`attachments`](super::attachments) (which
//! takes the state) so the state does not import what imports it.

use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::blobs::Blobs;

/// The file store, and the permits for making thumbnails. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Files {
    pub blobs: Blobs,
    /// Thumbnails made at once: one per core, so decoding never takes every core from the
    /// requests (and the memory an image may take, `images::MAX_DECODE_BYTES`, is bounded
    /// by this many).
    thumbnails: Arc<Semaphore>,
    /// Bodies the folder's upload route holds in memory at once (each up to 25 MiB).
    uploads: Arc<Semaphore>,
}

/// How many uploads to the folder's own route are read at once: 16 × 25 MiB = 400 MiB at
/// most in memory, whatever number of links or connections clients hold.
pub const UPLOADS_AT_ONCE: usize = 16;

impl Files {
    pub fn new(blobs: Blobs) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            blobs,
            thumbnails: Arc::new(Semaphore::new(cores)),
            uploads: Arc::new(Semaphore::new(UPLOADS_AT_ONCE)),
        }
    }

    /// The permits a thumbnail takes one of while it is made.
    pub fn thumbnails(&self) -> &Arc<Semaphore> {
        &self.thumbnails
    }

    /// A place for one upload body, if one is free.
    pub fn upload_permit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.uploads.clone().try_acquire_owned().ok()
    }
}
