//! Which arrays this process holds: a table per metadata segment, indexed by header place.
//!
//! Every array a process holds has one `LocalArray` (one holder bit, however many views and
//! clones), and an attach of an array the process already holds must find it. The table maps a
//! header block's place to a `Weak` of that `LocalArray`, one word per 128 bytes of the segment
//! (header blocks are at least 128 bytes and aligned to their size, so no two share a word).
//!
//! # Invariants
//!
//! 1. A word is 0 (no entry) or the address of a `Weak` ([`Weak::into_raw`]), with bit 0 set
//!    while someone holds the entry's lock. Only the lock holder changes the word, and its
//!    unlock (a Release store) publishes the new entry.
//! 2. The entry names the one `LocalArray` whose hold is this process's hold on the array at
//!    that place. Only that `LocalArray`'s `Drop` removes it, while releasing the hold under the
//!    entry's lock; a pin that replaces the entry of a dying `LocalArray` takes its hold over
//!    (the dying one then finds another entry and releases nothing).
//! 3. An `Arc` upgraded from an entry is never dropped while that entry is locked (its `Drop`
//!    would take the same lock): callers declare it before the guard.
//! 4. Process-local: a table lives in this process's heap. A forked child inherits it with
//!    the arrays it describes (and re-acquires them under its own slot).
//!
//! Why not a `Mutex<HashMap>`: an array made and dropped took the map's lock twice and hashed
//! twice, about a fifth of its cost; an entry's lock is one CAS and one store, and threads
//! working on different arrays never meet.

use std::sync::{Arc, OnceLock, Weak};

use crate::sync::SharedU64;

const LOCKED: u64 = 1;
/// Bytes of segment per word: the smallest header block.
const PLACE_LOG2: u32 = 7;

/// The tables of one pool in this process, by metadata segment.
pub(crate) struct Locals<T> {
    tables: Box<[OnceLock<Box<[SharedU64]>>]>,
    _entries: core::marker::PhantomData<Weak<T>>,
}

/// An entry, locked: unlocked when dropped.
pub(crate) struct Entry<'a, T> {
    word: &'a SharedU64,
    value: u64,
    _entries: core::marker::PhantomData<Weak<T>>,
}

impl<T> Locals<T> {
    /// Tables for up to `segments` segments, each made on first use.
    pub(crate) fn new(segments: usize) -> Self {
        Self { tables: (0..segments).map(|_| OnceLock::new()).collect(), _entries: core::marker::PhantomData }
    }

    /// Locks the entry of the header block at `offset` in segment `segment`, whose capacity is
    /// `capacity` bytes. `None` if that place cannot start a header block of such a segment.
    pub(crate) fn lock(&self, segment: u16, offset: u64, capacity: u64) -> Option<Entry<'_, T>> {
        if offset & ((1 << PLACE_LOG2) - 1) != 0 {
            return None;
        }
        let table = self.tables.get(segment as usize)?.get_or_init(|| zeroed_words((capacity >> PLACE_LOG2) as usize));
        let word = table.get((offset >> PLACE_LOG2) as usize)?;
        Some(Entry::lock_word(word))
    }

    /// Runs `f` on every live entry's `Arc`, under that entry's lock, and returns the `Arc`s
    /// (invariant 3: the caller drops them, after every lock is released).
    pub(crate) fn for_each_live(&self, mut f: impl FnMut(&Arc<T>)) -> Vec<Arc<T>> {
        let mut out = Vec::new();
        for table in self.tables.iter().filter_map(OnceLock::get) {
            for word in table.iter() {
                if word.load(core::sync::atomic::Ordering::Relaxed) == 0 {
                    continue;
                }
                let entry = Entry::<T>::lock_word(word);
                if let Some(a) = entry.upgrade() {
                    f(&a);
                    out.push(a);
                }
            }
        }
        out
    }
}

impl<T> Drop for Locals<T> {
    fn drop(&mut self) {
        for table in self.tables.iter_mut().filter_map(OnceLock::get_mut) {
            for word in table.iter_mut() {
                let v = *word.get_mut() & !LOCKED;
                if v != 0 {
                    // SAFETY: invariant 1: a nonzero word is the address `Weak::into_raw` gave;
                    // we own the table, so this is the entry's last use.
                    drop(unsafe { Weak::from_raw(v as *const T) });
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

    fn weak(&self) -> Option<core::mem::ManuallyDrop<Weak<T>>> {
        // SAFETY: invariant 1: a nonzero value is the address `Weak::into_raw` gave, and the
        // entry still owns that `Weak` (ManuallyDrop: we only borrow it).
        (self.value != 0).then(|| core::mem::ManuallyDrop::new(unsafe { Weak::from_raw(self.value as *const T) }))
    }

    /// The entry's `LocalArray`, if it is alive.
    pub(crate) fn upgrade(&self) -> Option<Arc<T>> {
        self.weak()?.upgrade()
    }

    /// Whether the entry names `this`.
    pub(crate) fn is(&self, this: *const T) -> bool {
        self.value == this as u64
    }

    /// Makes `new` the entry; returns the one it replaces (dropping a `Weak` never runs the
    /// array's `Drop`, so the caller may drop it at any time).
    pub(crate) fn replace(&mut self, new: Option<Weak<T>>) -> Option<Weak<T>> {
        let old = self.weak().map(core::mem::ManuallyDrop::into_inner);
        self.value = new.map_or(0, |w| Weak::into_raw(w) as u64);
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
        let locals = Locals::<u32>::new(4);
        let a = Arc::new(7u32);
        let b = Arc::new(8u32);
        {
            let mut e = locals.lock(1, 256, 4096).unwrap();
            assert!(e.upgrade().is_none());
            assert!(e.replace(Some(Arc::downgrade(&a))).is_none());
        }
        let mut e = locals.lock(1, 256, 4096).unwrap();
        assert!(e.is(Arc::as_ptr(&a)) && !e.is(Arc::as_ptr(&b)));
        assert_eq!(e.upgrade().as_deref(), Some(&7));
        let old = e.replace(Some(Arc::downgrade(&b)));
        drop(e);
        assert!(old.is_some_and(|w| w.ptr_eq(&Arc::downgrade(&a))));
        locals.lock(1, 384, 4096).unwrap().replace(Some(Arc::downgrade(&a)));
        let mut seen = Vec::new();
        let live = locals.for_each_live(|x| seen.push(**x));
        seen.sort();
        assert_eq!((seen, live.len()), (vec![7, 8], 2));
        drop((a, live));
        assert_eq!(locals.for_each_live(|_| {}).len(), 1, "a dead array's entry does not upgrade");
        // Places that cannot start a header block.
        assert!(locals.lock(1, 100, 4096).is_none(), "not a multiple of 128");
        assert!(locals.lock(1, 4096, 4096).is_none(), "beyond the segment");
        assert!(locals.lock(4, 0, 4096).is_none(), "beyond the segments");
        assert_eq!(Arc::weak_count(&b), 1);
        drop(locals);
        assert_eq!(Arc::weak_count(&b), 0, "the table's weak references go with it");
    }

    #[test]
    fn an_entry_excludes_other_threads() {
        let locals = Arc::new(Locals::<u32>::new(1));
        let inside = Arc::new(SharedU64::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (locals, inside) = (locals.clone(), inside.clone());
                std::thread::spawn(move || {
                    for _ in 0..2000 {
                        let e = locals.lock(0, 128, 1024).unwrap();
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
