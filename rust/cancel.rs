//! Cooperative interruption of long operations (Ctrl-C from Python).
//!
//! Each interruptible call gets its own stop token ([`Token`]), installed for the thread that
//! drives the call ([`with_token`]); the call's loops check it between blocks with [`check`]
//! and stop with [`Error::Interrupted`]. Calls on other threads (which have no token, or
//! their own) are not affected. Most checks sit in the driving loops; a parallel loop whose
//! pieces are long takes the driving thread's token along ([`current`]) and checks it in
//! its closures ([`stopped`]).

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::error::{Error, Result};

/// A stop request shared by a call and whoever may interrupt it.
pub type Token = Arc<AtomicBool>;

thread_local! {
    static CURRENT: RefCell<Option<Token>> = const { RefCell::new(None) };
}

/// Run `f` with `token` as this thread's stop token (the previous one is restored after,
/// also when `f` panics).
pub fn with_token<R>(token: Token, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Token>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let prev = self.0.take();
            CURRENT.with(|c| *c.borrow_mut() = prev);
        }
    }
    let _restore = Restore(CURRENT.with(|c| c.borrow_mut().replace(token)));
    f()
}

/// Whether a stop was asked for the call running on this thread.
#[inline]
pub fn requested() -> bool {
    CURRENT.with(|c| c.borrow().as_ref().is_some_and(|t| t.load(Ordering::Relaxed)))
}

/// The stop token of the call running on this thread (`None` outside an interruptible
/// call), for the worker threads the call starts.
pub fn current() -> Option<Token> {
    CURRENT.with(|c| c.borrow().clone())
}

/// Whether a stop was asked through `token` (from [`current`]).
#[inline]
pub fn stopped(token: &Option<Token>) -> bool {
    token.as_ref().is_some_and(|t| t.load(Ordering::Relaxed))
}

/// `Err(Error::Interrupted)` when a stop was asked for the call running on this thread.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_stops_its_own_thread_only() {
        let token: Token = Arc::new(AtomicBool::new(false));
        assert!(check().is_ok()); // no token: never stopped
        with_token(token.clone(), || {
            assert!(check().is_ok());
            token.store(true, Ordering::Relaxed);
            assert!(matches!(check(), Err(Error::Interrupted)));
            assert!(check_io().is_err());
            // another thread (no token) runs on
            std::thread::scope(|s| s.spawn(|| assert!(check().is_ok())).join().unwrap());
            // unless it was handed this call's token
            let taken = current();
            assert!(stopped(&taken));
            std::thread::scope(|s| s.spawn(move || assert!(stopped(&taken))).join().unwrap());
        });
        assert!(check().is_ok()); // restored
        assert!(current().is_none() && !stopped(&current()));
    }
}
