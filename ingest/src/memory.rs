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
//! This is the workspace's one module with `unsafe` code: one call into glibc that takes an
//! integer. With other C libraries it does nothing.

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
