//! Cooperative interruption of long operations: the Python bindings set the flag when
//! Ctrl-C arrives during a long call (readers, writers, batch queries), and those loops
//! check it between blocks and stop with [`Error::Interrupted`]. A process-wide flag: set only
//! while an interrupted call winds down, then cleared.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, Result};

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Ask the running long operations to stop.
pub fn request() {
    REQUESTED.store(true, Ordering::Relaxed);
}

/// Let operations run again (after the interrupted one has stopped).
pub fn clear() {
    REQUESTED.store(false, Ordering::Relaxed);
}

/// Whether a stop was asked for.
#[inline]
pub fn requested() -> bool {
    REQUESTED.load(Ordering::Relaxed)
}

/// `Err(Error::Interrupted)` when a stop was asked for.
#[inline]
pub fn check() -> Result<()> {
    if requested() {
        Err(Error::Interrupted)
    } else {
        Ok(())
    }
}

/// For writers' `std::io` closures: an `Interrupted` I/O error when a stop was asked for.
#[inline]
pub fn check_io() -> std::io::Result<()> {
    if requested() {
        Err(std::io::Error::new(std::io::ErrorKind::Interrupted, "interrupted"))
    } else {
        Ok(())
    }
}
