//! Which arrays this process holds: a table per metadata segment, indexed by header place.
//!
//! Every array a process holds has one `LocalArray` (one holder bit, however many views and
//! clones), and an attach of an array the process already holds must find it. The table maps a
//! header block's place to that `LocalArray`, one word per 128 bytes of the segment (header
//! blocks are at least 128 bytes and aligned to their size, so no two share a word).
//!
//! # Invariants
//!
//! 1. A word is 0 (no entry) or the address of a `T`, with bit 0 set while someone holds the
//!    entry's lock. Only the lock holder changes the word, and its unlock (a Release store)
//!    publishes the new entry.
//! 2. While an entry is locked and names a `T`, that `T` is alive: its owner takes the entry's
//!    lock, and removes the entry if it names it, before it destroys the `T`. (For the pool:
//!    the entry names the `LocalArray` this process made or attached last at that place; if
//!    this process holds an array there, that `LocalArray`'s hold is the hold. A pin that
//!    replaces the entry of a `LocalArray` whose last reference went takes its hold over, and
//!    the old one then finds another entry and releases nothing. An entry whose `LocalArray`
//!    holds nothing, after `leave` or a fork, may be replaced by a new array at that place.)
//! 3. A reference taken from an entry is never dropped while that entry is locked (dropping
//!    the last one takes the same lock): callers declare it before the guard.
//! 4. Process-local: a table lives in this process's heap. A forked child inherits it with
//!    the arrays it describes (and re-acquires them under its own slot).
//!
//! Why not a `Mutex<HashMap>`: an array made and dropped took the map's lock twice and hashed
//! twice, about a fifth of its cost; an entry's lock is one CAS and one store, and threads
//! working on different arrays never meet.

use core::ptr::NonNull;
use std::sync::OnceLock;

use crate::sync::SharedU64;

const LOCKED: u64 = 1;
/// Bytes of segment per word: the smallest header block.
const PLACE_LOG2: u32 = 7;

/// The tables of one pool in this process, by metadata segment.
pub(crate) struct Locals<T> {
    tables: Box<[OnceLock<Box<[SharedU64]>>]>,
    _entries: core::marker::PhantomData<*const T>,
}

// SAFETY: the tables are atomics; the `T`s they name are handed out only as pointers, which
// callers dereference under invariant 2 (for the pool, `LocalArray` is Send + Sync).
unsafe impl<T: Send + Sync> Send for Locals<T> {}
// SAFETY: as for `Send`.
unsafe impl<T: Send + Sync> Sync for Locals<T> {}

/// An entry, locked: unlocked when dropped.
pub(crate) struct Entry<'a, T> {
    word: &'a SharedU64,
    value: u64,
    _entries: core::marker::PhantomData<*const T>,
}

impl<T> Locals<T> {
    /// Tables for up to `segments` segments, each made on first use.
    pub(crate) fn new(segments: usize) -> Self {
        Self { tables: (0..segments).map(|_| OnceLock::new()).collect(), _entries: core::marker::PhantomData }
    }

    /// Locks the entry of the header block at `offset` in segment `segment`, whose capacity in
    /// bytes `capacity` gives (asked only when the segment's table is made). `None` if that
    /// place cannot start a header block of such a segment.
    pub(crate) fn lock(&self, segment: u16, offset: u64, capacity: impl FnOnce() -> u64) -> Option<Entry<'_, T>> {
        if offset & ((1 << PLACE_LOG2) - 1) != 0 {
            return None;
        }
        let table =
            self.tables.get(segment as usize)?.get_or_init(|| zeroed_words((capacity() >> PLACE_LOG2) as usize));
        let word = table.get((offset >> PLACE_LOG2) as usize)?;
        Some(Entry::lock_word(word))
    }

    /// Runs `f` on every entry's `T`, under that entry's lock (invariant 2 keeps it alive
    /// meanwhile; invariant 3: references `f` takes are dropped after this returns).
    pub(crate) fn for_each(&self, mut f: impl FnMut(NonNull<T>)) {
        for table in self.tables.iter().filter_map(OnceLock::get) {
            for word in table.iter() {
                if word.load(core::sync::atomic::Ordering::Relaxed) == 0 {
                    continue;
                }
                let entry = Entry::<T>::lock_word(word);
                if let Some(p) = entry.get() {
                    f(p);
                }
            }
        }
    }
}

impl<'a, T> Entry<'a, T> {
    fn lock_word(word: &'a SharedU64) -> Self {
        let mut spins = 0u32;
        loop {
            let v = word.load(core::sync::atomic::Ordering::Relaxed);
            // Acquire: invariant 1, the previous holder's entry and what it did under the lock.
            if v & LOCKED == 0
                && word
                    .compare_exchange_weak(
                        v,
                        v | LOCKED,
                        core::sync::atomic::Ordering::Acquire,
                        core::sync::atomic::Ordering::Relaxed,
                    )
                    .is_ok()
            {
                return Self { word, value: v, _entries: core::marker::PhantomData };
            }
            // Held by another thread working on the same array (it may be waiting on the
            // array's refcount lock, so do not spin for long).
            spins += 1;
            if spins < 64 {
                core::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }

    /// The `T` the entry names (alive while the entry is locked: invariant 2).
    pub(crate) fn get(&self) -> Option<NonNull<T>> {
        NonNull::new(self.value as *mut T)
    }

    /// Whether the entry names `this`.
    pub(crate) fn is(&self, this: *const T) -> bool {
        self.value == this as u64
    }

    /// Makes `new` the entry; returns the one it replaces.
    pub(crate) fn replace(&mut self, new: Option<NonNull<T>>) -> Option<NonNull<T>> {
        let old = self.get();
        self.value = new.map_or(0, |p| p.as_ptr() as u64);
        debug_assert!(self.value & LOCKED == 0, "entries are at least 2-aligned");
        old
    }
}

impl<T> Drop for Entry<'_, T> {
    fn drop(&mut self) {
        // Release: invariant 1.
        self.word.store(self.value, core::sync::atomic::Ordering::Release);
    }
}

/// `len` zeroed words, allocated as zeroed memory (pages untouched until used: a table of
/// 16 MiB of segment is 1 MiB of address space, and costs only the pages of places in use).
fn zeroed_words(len: usize) -> Box<[SharedU64]> {
    let len = len.max(1);
    let layout = std::alloc::Layout::array::<SharedU64>(len).expect("a table of at most 2^57 words");
    // SAFETY: `layout` has a nonzero size (len >= 1).
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<SharedU64>();
    if ptr.is_null() {
        std::alloc::handle_alloc_error(layout);
    }
    // SAFETY: `ptr` is a fresh allocation of `layout` (the global allocator, as `Box` uses),
    // holding `len` words of zero bytes, each a valid `SharedU64` holding 0.
    unsafe { Box::from_raw(core::ptr::slice_from_raw_parts_mut(ptr, len)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_found_by_place_replaced_and_listed() {
        let locals = Locals::<u64>::new(4);
        let (mut a, mut b) = (7u64, 8u64);
        let (pa, pb) = (NonNull::from(&mut a), NonNull::from(&mut b));
        {
            let mut e = locals.lock(1, 256, || 4096).unwrap();
            assert!(e.get().is_none());
            assert!(e.replace(Some(pa)).is_none());
        }
        let mut e = locals.lock(1, 256, || 4096).unwrap();
        assert!(e.is(pa.as_ptr()) && !e.is(pb.as_ptr()));
        assert_eq!(e.replace(Some(pb)), Some(pa));
        drop(e);
        locals.lock(1, 384, || 4096).unwrap().replace(Some(pa));
        let mut seen = Vec::new();
        // SAFETY: the pointers are to `a` and `b`, alive for the whole test.
        locals.for_each(|p| seen.push(unsafe { *p.as_ref() }));
        seen.sort();
        assert_eq!(seen, vec![7, 8]);
        locals.lock(1, 384, || 4096).unwrap().replace(None);
        let mut n = 0;
        locals.for_each(|_| n += 1);
        assert_eq!(n, 1, "a removed entry is not listed");
        // Places that cannot start a header block.
        assert!(locals.lock(1, 100, || 4096).is_none(), "not a multiple of 128");
        assert!(locals.lock(1, 4096, || 4096).is_none(), "beyond the segment");
        assert!(locals.lock(4, 0, || 4096).is_none(), "beyond the segments");
    }

    #[test]
    fn an_entry_excludes_other_threads() {
        let locals = std::sync::Arc::new(Locals::<u64>::new(1));
        let inside = std::sync::Arc::new(SharedU64::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (locals, inside) = (locals.clone(), inside.clone());
                std::thread::spawn(move || {
                    for _ in 0..2000 {
                        let e = locals.lock(0, 128, || 1024).unwrap();
                        assert_eq!(
                            inside.fetch_add(1, core::sync::atomic::Ordering::Relaxed),
                            0,
                            "two holders at once"
                        );
                        inside.fetch_sub(1, core::sync::atomic::Ordering::Relaxed);
                        drop(e);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }
}
