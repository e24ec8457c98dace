//! Segment files kept open for reading paged bodies back: a few (the segments being read are
//! few, the oldest ones), least recently used out first, so a read does not open and close a
//! file each time. The writer evicts a segment when it deletes it, so a deleted segment's
//! space is not held by a descriptor; a segment is opened under the same lock, so it cannot
//! be opened between its deletion and its eviction and then stay cached.

use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::{lock, segment_path};

/// Segments kept open at most.
const OPEN_FILES: usize = 8;

/// The open segment files, most recently used last.
#[derive(Default)]
pub struct ReadFiles {
    open: Mutex<Vec<(u32, Arc<File>)>>,
}

impl ReadFiles {
    /// The open file of `segment` in `dir`, opening it if needed.
    pub fn get(&self, dir: &Path, segment: u32) -> Option<Arc<File>> {
        let mut open = lock(&self.open);
        if let Some(index) = open.iter().position(|(number, _)| *number == segment) {
            let entry = open.remove(index);
            let file = entry.1.clone();
            open.push(entry);
            return Some(file);
        }
        let file = Arc::new(File::open(segment_path(dir, segment)).ok()?);
        if open.len() >= OPEN_FILES {
            open.remove(0);
        }
        open.push((segment, file.clone()));
        Some(file)
    }

    /// Forgets `segment` (deleted).
    pub fn evict(&self, segment: u32) {
        lock(&self.open).retain(|(number, _)| *number != segment);
    }

    /// How many are open.
    #[cfg(test)]
    pub fn open_count(&self) -> usize {
        lock(&self.open).len()
    }
}
