//! Giving freed memory back to the operating system after a flush, instead of leaving it in the
//! allocator's free lists.
//!
//! With glibc's allocator, the spans a flush has written and freed stayed resident: after
//! `hopscope load` of 1M spans, with every span committed and nothing buffered, the resident set
//! stayed at 1.1–1.5 GiB, and `malloc_trim` brought it to 0.2–0.4 GiB (BENCHMARKS.md, "Ingest:
//! memory given back, …"). glibc returns free pages by itself only from the top of each heap, and
//! most of these were not at the top. So the flusher (and each maintenance
//! pass) asks for them back when it is done. A fixed mmap threshold (large blocks mapped and unmapped
//! whole) lowered the peak a little more but cost about a fifth more CPU per span in a bench pair,
//! and is not set.
//!
//! glibc also gives each thread that allocates while the others hold their arenas an arena of its
//! own, up to eight per core: the blocking threads that flush and merge come and go, and each new
//! arena keeps its own free pages and fragments. [`limit_arenas`] caps them at
//! [`ARENAS_PER_CORE`] per core unless `MALLOC_ARENA_MAX` is set (BENCHMARKS.md, "Fewer malloc
//! arenas").
//!
//! This is the workspace's one module with `unsafe` code: calls into glibc that take integers.
//! With other C libraries they do nothing.

/// Malloc arenas a process may have per core, at most (glibc's default is 8). Under `hopscope
/// load` of 10M spans on 2 cores, 4 arenas took about 130 MiB off the median peak resident memory
/// of glibc's 16, for about 5% more CPU; 2 arenas took about 180 MiB, for about 12% more.
pub const ARENAS_PER_CORE: usize = 2;

/// Caps glibc's malloc arenas at [`ARENAS_PER_CORE`] per core, unless the environment sets
/// `MALLOC_ARENA_MAX` (glibc reads it itself). Call it first thing in `main`, before any thread
/// starts: a thread keeps the arena it first allocated from.
pub fn limit_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        set_arena_max(i32::try_from(crate::cores().saturating_mul(ARENAS_PER_CORE)).unwrap_or(i32::MAX));
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn set_arena_max(arenas: i32) {
    // SAFETY: mallopt takes a parameter number and an integer value; M_ARENA_MAX only bounds the
    // arenas glibc creates from now on.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, arenas);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_arena_max(_arenas: i32) {}

/// Gives the allocator's free pages back to the operating system. Walks every arena (milliseconds
/// over a large heap): call it from blocking code, after work that freed much memory (a flush, a
/// compaction), never on an async worker thread.
pub fn release_free_memory() {
    trim();
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim() {
    // SAFETY: malloc_trim takes an integer (the padding to keep at the top of the main heap) and
    // only releases pages no allocation uses; glibc locks each arena while it walks it.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
