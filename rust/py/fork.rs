//! rayon's global thread pool does not survive `fork()`: in a child process (multiprocessing's
//! default start method on Linux, torch DataLoader workers) its worker threads are gone,
//! and the first parallel loop waits for them forever. Python's `os.register_at_fork`
//! calls [`after_fork_in_child`] in every child; from then on each GIL-releasing call runs
//! inside a pool made for that process (made on first use, one per fork generation).
//! Processes that never forked take no detour: one relaxed atomic load per call.

use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

use pyo3::prelude::*;

/// How many forks lie between the module's first process and this one.
static FORKS: AtomicUsize = AtomicUsize::new(0);

struct ChildPool {
    generation: usize,
    pool: rayon::ThreadPool,
}

/// The pool of the current fork generation (leaked on purpose: a pool's threads do not
/// exist in the processes forked after it, so it is never joined or dropped).
static POOL: AtomicPtr<ChildPool> = AtomicPtr::new(std::ptr::null_mut());

/// Called by Python in a child process right after `fork()` (registered in `__init__.py`).
#[pyfunction]
pub fn _after_fork_in_child() {
    FORKS.fetch_add(1, Ordering::AcqRel);
}

fn child_pool(generation: usize) -> Option<&'static rayon::ThreadPool> {
    loop {
        let current = POOL.load(Ordering::Acquire);
        // SAFETY: POOL only ever holds null or a leaked `Box<ChildPool>` that is never freed.
        if let Some(p) = unsafe { current.as_ref() } {
            if p.generation == generation {
                return Some(&p.pool);
            }
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(default_threads())
            .thread_name(|i| format!("vecfusion-{i}"))
            .build()
            .ok()?;
        let made = Box::into_raw(Box::new(ChildPool { generation, pool }));
        if POOL.compare_exchange(current, made, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            // SAFETY: published just now and never freed.
            return Some(unsafe { &(*made).pool });
        }
        // another thread published a pool first: ours was never shared, so it is dropped
        // (its idle threads exit) and the published one is looked at again
        // SAFETY: `made` came from Box::into_raw above and nobody else has seen it.
        drop(unsafe { Box::from_raw(made) });
    }
}

/// rayon's default thread count (`RAYON_NUM_THREADS`, else the available parallelism),
/// worked out without `rayon::current_num_threads()`, which would start the global pool in a
/// child whose parent never used it: threads that would sit idle beside the child's own.
fn default_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Run `f` where its rayon loops have live threads: directly in a process that never
/// forked, else inside this process's own pool.
pub fn in_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let generation = FORKS.load(Ordering::Relaxed);
    if generation == 0 && !NO_GLOBAL_POOL.load(Ordering::Relaxed) {
        return f();
    }
    match child_pool(generation) {
        Some(pool) => pool.install(f),
        None => f(), // no thread could be started: nothing better to do
    }
}

/// Set once rayon's global pool failed to start (no thread could be started: an
/// address-space limit). rayon never retries: its global pool is then gone for good, and
/// every parallel loop outside another pool panics. From then on calls run in a pool of
/// this module's own (as in a forked child), made when threads can be had again.
static NO_GLOBAL_POOL: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Start rayon's global pool (at import, while memory is to be had): rayon starts it at
/// the first parallel loop otherwise, and panics there, for good, if no thread can be
/// started then (an address-space limit). If it cannot start now, calls run in a pool of
/// this module's own, made when threads can be had.
pub fn start_global_pool() {
    match rayon::ThreadPoolBuilder::new().build_global() {
        // (already: a second initialization of the module in this process)
        Err(e) if !e.to_string().contains("already been initialized") => {
            NO_GLOBAL_POOL.store(true, Ordering::Relaxed);
        }
        _ => {}
    }
}

/// Make sure the parallel loops of the coming call have threads, or say why not (a
/// MemoryError, where rayon would panic).
fn ensure_pool() -> PyResult<()> {
    let generation = FORKS.load(Ordering::Relaxed);
    if generation == 0 && !NO_GLOBAL_POOL.load(Ordering::Relaxed) {
        return Ok(());
    }
    match child_pool(generation) {
        Some(_) => Ok(()),
        None => Err(no_threads("no thread could be started")),
    }
}

/// The message of a panic (a `&str` or `String` payload).
fn panic_text(payload: &(dyn std::any::Any + Send)) -> Option<&str> {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
}

fn no_threads(why: &str) -> PyErr {
    pyo3::exceptions::PyMemoryError::new_err(format!("not enough memory to start worker threads: {why}"))
}

/// `py.detach(f)` with `f` run by [`in_pool`].
pub fn detach<R: Send>(py: Python<'_>, f: impl FnOnce() -> R + Send) -> R {
    py.detach(|| in_pool(f))
}

/// Work (about how many values a call reads) below which [`detach_if`] keeps the GIL.
///
/// Releasing the GIL and taking it back costs little alone, but next to a busy Python
/// thread taking it back waits up to the interpreter's switch interval (5 ms): a lookup of
/// ten words went from 1.2 µs to 105 µs, a query over 1000 x 50 from 5 µs to 2 ms. Calls
/// this small (some 10-30 µs of work) keep it, as numpy keeps it for small arrays.
pub const SMALL_WORK: u64 = 1 << 17;

/// Work of looking up words of these byte lengths beyond what a call counts per word: an
/// unknown word reads a row of `dims` values for each of its n-grams, several per byte. Words
/// of up to 32 bytes are within the per-word count; a longer one (a megabyte of text is one
/// "word" to the vocabulary) adds its extra bytes.
pub fn long_word_work(lens: impl IntoIterator<Item = usize>, dims: usize) -> u64 {
    let extra = lens.into_iter().map(|l| l.saturating_sub(32) as u64).fold(0u64, u64::saturating_add);
    extra.saturating_mul(dims.max(64) as u64).saturating_mul(8)
}

/// About how many values looking `words` up reads, for [`detach_if`]: a word's own row or a
/// few dozen n-gram rows of `dims` values (counted as 32), plus [`long_word_work`].
pub fn words_work(words: &[&str], dims: usize) -> u64 {
    (words.len() as u64)
        .saturating_mul(dims.max(64) as u64)
        .saturating_mul(32)
        .saturating_add(long_word_work(words.iter().map(|w| w.len()), dims))
}

/// [`detach`] for work of at least [`SMALL_WORK`]; smaller work runs with the GIL held, but
/// only where it runs on this thread: in a forked child (or without rayon's global pool) it
/// runs in this process's own pool, where it may wait for another thread's long call, so it
/// lets the GIL go there too.
pub fn detach_if<R: Send>(py: Python<'_>, work: u64, f: impl FnOnce() -> R + Send) -> R {
    if work < SMALL_WORK && FORKS.load(Ordering::Relaxed) == 0 && !NO_GLOBAL_POOL.load(Ordering::Relaxed) {
        f()
    } else {
        detach(py, f)
    }
}

/// [`detach`] for long operations that stop on Ctrl-C: `f` runs on a worker thread (in the
/// process's pool) with a stop token of its own ([`crate::cancel`]), while this thread,
/// without the GIL, waits for it and every 50 ms lets Python run its signal handlers. When
/// one raises (KeyboardInterrupt), the token asks `f`'s loops to stop; once `f` has
/// returned, the Python exception is raised, whatever `f` returned. Other calls, on other
/// threads, are not affected. A call that ends sooner returns at once.
pub fn detach_interruptible<R: Send>(py: Python<'_>, f: impl FnOnce() -> crate::Result<R> + Send) -> PyResult<R> {
    use std::sync::atomic::AtomicBool;
    ensure_pool()?;
    use std::sync::mpsc;
    use std::time::Duration;
    let token: crate::cancel::Token = std::sync::Arc::new(AtomicBool::new(false));
    let mut interrupt: Option<PyErr> = None;
    let outcome = py.detach(|| {
        std::thread::scope(|s| {
            let (tx, rx) = mpsc::channel();
            let worker_token = token.clone();
            let spawned = std::thread::Builder::new().spawn_scoped(s, move || {
                // a panic is carried back and resumed on the calling thread (its own message)
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    in_pool(|| crate::cancel::with_token(worker_token, f))
                }));
                let _ = tx.send(r);
            });
            if let Err(e) = spawned {
                return Err(Box::new(format!("failed to spawn thread: {e}")) as Box<dyn std::any::Any + Send>);
            }
            loop {
                match rx.recv_timeout(Duration::from_millis(50)) {
                    Ok(r) => return r,
                    // (the worker always sends before it ends)
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        return Err(Box::new("vecfusion: the worker thread ended without a result")
                            as Box<dyn std::any::Any + Send>)
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        if interrupt.is_none() {
                            Python::attach(|py| {
                                if let Err(e) = py.check_signals() {
                                    interrupt = Some(e);
                                    token.store(true, std::sync::atomic::Ordering::Relaxed);
                                }
                            });
                        }
                    }
                }
            }
        })
    });
    let result = match outcome {
        Ok(r) => r,
        // no thread could be started (an address-space limit): out of memory, not a bug
        Err(panic) => match panic_text(&*panic) {
            Some(m) if m.starts_with("failed to spawn thread") => return Err(no_threads(m)),
            _ => std::panic::resume_unwind(panic),
        },
    };
    match interrupt {
        Some(e) => Err(e),
        None => result.map_err(PyErr::from),
    }
}
