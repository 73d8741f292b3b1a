//! A global allocator that counts live heap bytes, for figures such as the memory a balancer
//! keeps per endpoint.
//!
//! Only a binary can install it (`#[global_allocator] static A: CountingAlloc = CountingAlloc;`),
//! so the criterion benchmarks, which link this library too, keep the plain system allocator.
//! Counting is off until [`CountingAlloc::start`], so that what a scenario times does not pay for
//! it: a scenario that times requests counts their allocations in a separate, untimed pass.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicU64, Ordering};

static COUNTING: AtomicBool = AtomicBool::new(false);
static LIVE: AtomicIsize = AtomicIsize::new(0);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

/// The system allocator, counting bytes allocated and freed once started.
#[derive(Debug)]
pub struct CountingAlloc;

impl CountingAlloc {
    /// Counts every allocation and free from now on.
    ///
    /// Memory allocated before this and freed after is counted as a negative, so start before
    /// building whatever is to be measured.
    pub fn start() {
        COUNTING.store(true, Ordering::SeqCst);
    }

    /// Stops counting; the counts keep their values.
    pub fn stop() {
        COUNTING.store(false, Ordering::SeqCst);
    }

    /// Bytes allocated and not freed while counting; compare two readings.
    pub fn live_bytes() -> isize {
        LIVE.load(Ordering::SeqCst)
    }

    /// Allocations (and reallocations) made while counting; compare two readings.
    pub fn allocations() -> u64 {
        ALLOCATIONS.load(Ordering::SeqCst)
    }

    /// Whether this allocator is the one installed: counting reads zero otherwise.
    pub fn is_installed() -> bool {
        let before = Self::live_bytes();
        let probe = std::hint::black_box(Box::new([0u8; 64]));
        let installed = Self::live_bytes() != before;
        drop(probe);
        installed
    }
}

fn count_allocation(bytes: isize) {
    if COUNTING.load(Ordering::Relaxed) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        LIVE.fetch_add(bytes, Ordering::Relaxed);
    }
}

fn count_free(bytes: isize) {
    if COUNTING.load(Ordering::Relaxed) {
        LIVE.fetch_sub(bytes, Ordering::Relaxed);
    }
}

// `GlobalAlloc` is an unsafe trait: implementing it is the only way to observe every heap
// allocation, and each method only forwards to `System` with the caller's own arguments.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds `GlobalAlloc::alloc`'s contract.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            count_allocation(layout.size() as isize);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            count_allocation(layout.size() as isize);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, which is `System`, with this `layout`.
        unsafe { System.dealloc(ptr, layout) };
        count_free(layout.size() as isize);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as `dealloc`, and the caller upholds `realloc`'s contract for `new_size`.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            count_allocation(new_size as isize - layout.size() as isize);
        }
        new
    }
}
