//! The name index: a hash table of names that grows and shrinks with them, kept consistent
//! whatever point a process is killed at.
//!
//! # The problem
//!
//! A pool of named arrays may hold tens of thousands of names (SharedArray's only limit is the
//! kernel's map count, about 65k), yet a fresh pool must not pay for them: a flat table of
//! 65,536 entries of 128 bytes would reserve 8 MiB in every pool. And any process of the pool
//! may be SIGKILLed in the middle of adding a name, deleting one, or growing the table.
//!
//! # The mechanism
//!
//! The directory holds only the table's root ([`NameRoot`], directory invariant 6). Each name is
//! an entry block of 128 bytes of its own in a metadata segment ([`NameEntry`]: magic, the
//! array's place and nonce, the name). The index is one block of a metadata segment: a power of
//! two of 16-byte slots, `(hash, entry place)`, probed linearly; slot 0 holds the index's magic
//! and is never probed. The index is rebuilt into a new block when it is too full (more than
//! 3/4 of its slots used or deleted), too empty (fewer than 1/8 used: it shrinks), and freed
//! with the last name, so a pool without names holds no name table at all.
//!
//! # Invariants
//!
//! 1. The root, the index and the entries change only under the directory lock, and are read
//!    only under it (listing included): no process reads a freed index.
//! 2. Every operation that changes them first records what it is about to do in the root's
//!    intent record (`op` and its `args`, the arguments before `op`), and clears `op` last, after
//!    its last change (blocks freed included). The directory lock is held throughout, so a
//!    process that takes it and finds `op` set knows its holder died in that operation, whether
//!    it found the lock `OwnerDied` or not (another path that takes the lock, such as growing
//!    the pool, may have taken it first and found nothing of its own to repair), and
//!    [`PoolShared::repair_names`] finishes or undoes it before anything else. The repair is
//!    idempotent: a repairer killed in turn leaves the record for the next taker.
//! 3. Blocks are never leaked nor freed twice: a new block (entry or index) carries this
//!    process's arena tag until the intent names it (a death before that gives it back through
//!    arena recovery); it is disowned only after, and only a repair or the operation frees it.
//!    A free of a block already freed (and perhaps reused, with another generation) fails on the
//!    block's generation and is ignored; an entry whose free was cut short (magic cleared, not
//!    freed) is freed by the repair.
//! 4. A slot is written place first, hash last; the hash word is its commit (0 empty, 1
//!    deleted, else a hash with its top bit set). `count` and `tombstones` count the slots and
//!    are recounted from them by a repair.
//! 5. Publishing: under the lock, the directory's holder bit of an array is set exactly when a
//!    name of that array is in the index, or an intent to publish it is recorded (the one-name
//!    check runs before the intent). So a repair of a publish finishes it if the bit is set
//!    (the name's reference was taken) and undoes it if not.
//! 6. A resize commits with one store of the root's `index` (after the new index is filled and
//!    disowned); the repair keeps whichever index `index` names and frees the other.
//!
//! A lookup hashes the name, probes the slots (at most 3/4 full, so runs are short) and compares
//! the name only in entries whose hash matches: O(1) expected, whatever the number of names.

use std::ptr::NonNull;

use shm_arena::Block;
use shm_sync::Released;

use super::{NameError, PoolShared, DIRECTORY_HOLDER, ORD};
use crate::directory::{load_name, store_name, NameEntry, NameRoot, KIND_META, MAX_NAME_LEN, NAME_ENTRY_MAGIC};
use crate::error::ArrayError;
use crate::kill_points::{self, KillPoint};
use crate::sync::SharedU64;

/// Fewest slots of an index (1 KiB).
const MIN_SLOTS: u64 = 64;
/// Most slots of an index: 16 MiB, a whole metadata segment.
const MAX_SLOTS: u64 = 1 << 20;
/// Most names a pool can have: the largest index at half load.
pub const MAX_NAMES: u64 = MAX_SLOTS / 2;
/// Bytes of a slot: its hash word and its entry's place.
const SLOT_BYTES: u64 = 16;
/// Slot 0's hash word: the kind magic of an index block (header invariant 1).
const INDEX_MAGIC: u64 = u64::from_le_bytes(*b"PYSHMIDX");
const EMPTY: u64 = 0;
const TOMBSTONE: u64 = 1;

/// The intent record's operations (invariant 2). Arguments: `[entry, array segment, header,
/// nonce]` for the first two, `[old index, new index]` for a resize.
const OP_NONE: u64 = 0;
const OP_PUBLISH: u64 = 1;
const OP_UNPUBLISH: u64 = 2;
const OP_RESIZE: u64 = 3;

/// A block of a metadata segment as one word: `segment << 56 | block bits` (0 is no block: the
/// bits of a real block have a nonzero size).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Place {
    pub(super) segment: u16,
    pub(super) block: Block,
}

impl Place {
    /// The word, or `None` if the block's bits need more than 56 bits (a metadata segment
    /// beyond 1 TiB, which the pool never makes).
    fn to_word(self) -> Option<u64> {
        let bits = self.block.to_bits();
        (bits >> 56 == 0 && self.segment < 256).then_some(u64::from(self.segment) << 56 | bits)
    }

    fn from_word(word: u64) -> Option<Self> {
        (word != 0).then(|| Place { segment: (word >> 56) as u16, block: Block::from_bits(word & ((1 << 56) - 1)) })
    }
}

/// The top bit keeps a hash apart from `EMPTY` and `TOMBSTONE` (invariant 4).
fn hash(name: &str) -> u64 {
    // FNV-1a, then splitmix64's finaliser so that the low bits (the probe start) mix well.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (h ^ (h >> 31)) | 1 << 63
}

/// The slots an index should have for `names` names, `tombstones` deleted slots, given the
/// `slots` it has (0 for none), and whether it must be rebuilt: the same size when it fits,
/// else room for twice the names (rebuilt even at the same size: that clears the deleted slots).
fn wanted_slots(names: u64, tombstones: u64, slots: u64) -> (u64, bool) {
    if names == 0 {
        return (0, slots != 0);
    }
    // Saturating: the counts come from shared memory, which a buggy process may have written.
    let fits = slots != 0 && names.saturating_add(tombstones).saturating_mul(4) <= slots * 3;
    let too_empty = slots > MIN_SLOTS && names.saturating_mul(8) < slots;
    if fits && !too_empty {
        return (slots, false);
    }
    // Clamped first (the bounds are powers of two, so this is the clamp of the power).
    (names.saturating_mul(2).clamp(MIN_SLOTS, MAX_SLOTS).next_power_of_two(), true)
}

/// An index block's slots, as pairs of words.
struct Index<'a> {
    words: &'a [SharedU64],
}

impl Index<'_> {
    fn slots(&self) -> usize {
        self.words.len() / 2
    }

    fn hash_at(&self, slot: usize) -> u64 {
        self.words[2 * slot].load(ORD)
    }

    fn place_at(&self, slot: usize) -> u64 {
        self.words[2 * slot + 1].load(ORD)
    }

    /// The slots to probe for `h`, in order: all of them but slot 0, starting at `h`'s.
    fn probe(&self, h: u64) -> impl Iterator<Item = usize> {
        let mask = self.slots() - 1;
        let start = h as usize & mask;
        (0..self.slots()).map(move |i| (start + i) & mask).filter(|s| *s != 0)
    }

    /// Writes a slot place first, hash last (invariant 4).
    fn put(&self, slot: usize, h: u64, place: u64) {
        self.words[2 * slot + 1].store(place, ORD);
        self.words[2 * slot].store(h, ORD);
    }

    /// Live slots: (slot, hash, place word).
    fn live(&self) -> impl Iterator<Item = (usize, u64, u64)> + '_ {
        (1..self.slots()).map(|s| (s, self.hash_at(s), self.place_at(s))).filter(|(_, h, _)| *h > TOMBSTONE)
    }
}

/// A name found in the index.
pub(super) struct Found<'a> {
    slot: usize,
    pub(super) place: Place,
    pub(super) entry: &'a NameEntry,
}

impl PoolShared {
    fn name_root(&self) -> &NameRoot {
        self.dir().names()
    }

    /// The block at `place`, mapped, as a slice of words (a metadata segment's block: pool
    /// invariant 1).
    fn block_words(&self, place: Place) -> Option<&[SharedU64]> {
        let meta = self.meta_segment(place.segment).ok()?;
        let ptr = meta.arena.as_ptr(place.block).ok()?;
        // SAFETY: a block the arena of a metadata segment resolved (allocated, in bounds), of
        // `size` bytes aligned to 128, mapped while the pool lives (segments invariant 3); its
        // words are accessed only atomically, by every process.
        Some(unsafe { core::slice::from_raw_parts(ptr.as_ptr().cast::<SharedU64>(), place.block.size() as usize / 8) })
    }

    /// The index the root names, under the lock (invariant 1).
    fn index(&self) -> Option<Index<'_>> {
        let words = self.block_words(Place::from_word(self.name_root().index.load(ORD))?)?;
        (words[0].load(ORD) == INDEX_MAGIC).then_some(Index { words })
    }

    /// The entry at `place` if it is one (its magic).
    fn entry_at(&self, place: Place) -> Option<&NameEntry> {
        let words = self.block_words(place)?;
        if words.len() * 8 < core::mem::size_of::<NameEntry>() {
            return None;
        }
        // SAFETY: a block of at least a `NameEntry`'s bytes (checked above), aligned to 128,
        // all atomics, mapped while the pool lives.
        let entry = unsafe { &*words.as_ptr().cast::<NameEntry>() };
        (entry.state.load(ORD) == NAME_ENTRY_MAGIC).then_some(entry)
    }

    /// The slot holding `name`, under the lock.
    pub(super) fn find_name(&self, name: &str) -> Option<Found<'_>> {
        let index = self.index()?;
        let h = hash(name);
        for slot in index.probe(h) {
            match index.hash_at(slot) {
                EMPTY => return None,
                x if x == h => {
                    let Some(place) = Place::from_word(index.place_at(slot)) else { continue };
                    if let Some(entry) = self.entry_at(place) {
                        if load_name(entry) == name {
                            return Some(Found { slot, place, entry });
                        }
                    }
                }
                _ => {}
            }
        }
        None
    }

    /// Every name in the index, under the lock.
    pub(super) fn all_names(&self) -> Vec<String> {
        let Some(index) = self.index() else { return Vec::new() };
        index.live().filter_map(|(_, _, p)| Place::from_word(p).and_then(|p| self.entry_at(p))).map(load_name).collect()
    }

    /// Allocates and fills an entry for `name` naming the array at `(segment, header, nonce)`;
    /// it carries this process's tag until an intent names it (invariant 3). Outside the lock:
    /// allocating may grow the pool, which takes the directory lock.
    pub(super) fn new_entry(&self, name: &str, array: (u16, Block, u64)) -> Result<Place, NameError> {
        debug_assert!(name.len() <= MAX_NAME_LEN);
        let (segment, block, ptr) = self.alloc_in(KIND_META, core::mem::size_of::<NameEntry>() as u64)?;
        let place = Place { segment, block };
        // SAFETY: a block we just allocated of at least 128 bytes (a metadata segment's minimum
        // block), aligned to 128, ours alone until an intent names it; all atomics.
        let entry = unsafe { &*ptr.as_ptr().cast::<NameEntry>() };
        // First, so that no sweep reads an array header's stale magic here (header invariant 1).
        entry.state.store(NAME_ENTRY_MAGIC, ORD);
        store_name(entry, name);
        entry.meta_segment.store(u64::from(array.0), ORD);
        entry.header.store(array.1.to_bits(), ORD);
        entry.nonce.store(array.2, ORD);
        if place.to_word().is_none() {
            self.free_name_block(place);
            return Err(NameError::Full);
        }
        Ok(place)
    }

    /// Frees an entry or index block (clearing its magic first, so no stale view takes it for
    /// one), giving an index's pages back. Errors (freed already: invariant 3) are ignored.
    pub(super) fn free_name_block(&self, place: Place) {
        let Ok(meta) = self.meta_segment(place.segment) else { return };
        if meta.arena.validate(place.block).is_err() {
            return;
        }
        if let Some(words) = self.block_words(place) {
            words[0].store(0, ORD);
        }
        kill_points::reached(KillPoint::NameBlockCleared);
        let _ = meta.arena.free_and_release(place.block);
    }

    /// Frees the entry block a dead holder's intent names, if it is still that allocation (its
    /// generation) and an entry, or an entry whose free was cut short: [`Self::free_name_block`]
    /// clears the magic before the free, so a death between the two leaves magic 0, and the
    /// block, disowned, would leak (found in review). A block of another kind is never freed.
    fn free_entry_left(&self, place: Place) {
        let Some(words) = self.block_words(place) else { return };
        if matches!(words[0].load(ORD), NAME_ENTRY_MAGIC | 0) {
            self.free_name_block(place);
        }
    }

    /// Records an intent (invariant 2): arguments first, then the operation.
    fn intend(&self, op: u64, args: [u64; 4]) {
        let root = self.name_root();
        for (w, a) in root.args.iter().zip(args) {
            w.store(a, ORD);
        }
        // Relaxed: read only by a later holder of the directory lock, whose acquire orders it;
        // a killed process's stores before this one are visible by then too.
        root.op.store(op, ORD);
    }

    /// Publishing `entry`, under the lock, after the one-name check (invariant 5): records the
    /// intent, disowns the entry, lets `take_reference` take the directory's reference, and
    /// inserts the entry. Undone if `take_reference` fails.
    pub(super) fn insert_name<E>(
        &self,
        name: &str,
        entry: Place,
        array: (u16, Block, u64),
        take_reference: impl FnOnce() -> Result<(), E>,
    ) -> Result<(), E> {
        let entry_word = entry.to_word().expect("checked by new_entry");
        self.intend(OP_PUBLISH, [entry_word, u64::from(array.0), array.1.to_bits(), array.2]);
        kill_points::reached(KillPoint::PublishIntent);
        if let Ok(meta) = self.meta_segment(entry.segment) {
            let _ = meta.arena.disown(entry.block);
        }
        kill_points::reached(KillPoint::PublishDisowned);
        let taken = take_reference();
        kill_points::reached(KillPoint::PublishReferenced);
        if let Err(e) = taken {
            self.free_name_block(entry);
            self.name_root().op.store(OP_NONE, ORD);
            return Err(e);
        }
        self.put_in_index(hash(name), entry_word);
        kill_points::reached(KillPoint::PublishInserted);
        self.name_root().op.store(OP_NONE, ORD);
        Ok(())
    }

    /// Puts a slot in the index (which has room: `fit_index` ran under this lock).
    fn put_in_index(&self, h: u64, entry_word: u64) {
        let root = self.name_root();
        let Some(index) = self.index() else { return };
        let Some(slot) = index.probe(h).find(|s| index.hash_at(*s) <= TOMBSTONE) else { return };
        if index.hash_at(slot) == TOMBSTONE {
            root.tombstones.store(root.tombstones.load(ORD).saturating_sub(1), ORD);
        }
        index.put(slot, h, entry_word);
        root.count.store(root.count.load(ORD).saturating_add(1), ORD);
    }

    /// Deletes a found name, under the lock: intent, slot, entry, then the directory's reference
    /// (freeing the array if it was the last).
    pub(super) fn remove_name(&self, found: Found<'_>, freer: u32) {
        let root = self.name_root();
        let (seg, header, nonce) = (
            found.entry.meta_segment.load(ORD) as u16,
            Block::from_bits(found.entry.header.load(ORD)),
            found.entry.nonce.load(ORD),
        );
        let entry_word = found.place.to_word().unwrap_or(0);
        self.intend(OP_UNPUBLISH, [entry_word, u64::from(seg), header.to_bits(), nonce]);
        kill_points::reached(KillPoint::DeleteIntent);
        if let Some(index) = self.index() {
            index.words[2 * found.slot].store(TOMBSTONE, ORD);
            root.count.store(root.count.load(ORD).saturating_sub(1), ORD);
            root.tombstones.store(root.tombstones.load(ORD).saturating_add(1), ORD);
        }
        kill_points::reached(KillPoint::DeleteRemoved);
        self.free_name_block(found.place);
        kill_points::reached(KillPoint::DeleteFreed);
        self.drop_directory_reference(seg, header, nonce, freer);
        kill_points::reached(KillPoint::DeleteReleased);
        root.op.store(OP_NONE, ORD);
    }

    /// Releases the directory's reference to the array at `(seg, header)` if it is still that
    /// array (`nonce`) and the directory still holds it; frees it if that was the last.
    fn drop_directory_reference(&self, seg: u16, header: Block, nonce: u64, freer: u32) {
        let Ok((_, h)) = self.meta_segment(seg).and_then(|meta| meta.header(header)) else { return };
        if h.nonce.load(ORD) != nonce || !h.refcount.is_held_by_among(DIRECTORY_HOLDER, &self.group()) {
            return;
        }
        if let Ok(Released::Last) | Err(shm_sync::RefError::Orphaned) =
            h.refcount.release_as(DIRECTORY_HOLDER, freer, &self.tokens(), &self.group())
        {
            self.free_array(seg, header, h);
        }
    }

    /// The slots the index should have for `extra` more names, if it must be rebuilt now.
    pub(super) fn index_refit(&self, extra: u64) -> Option<u64> {
        let root = self.name_root();
        let slots = self.index().map_or(0, |i| i.slots() as u64);
        let (want, rebuild) =
            wanted_slots(root.count.load(ORD).saturating_add(extra), root.tombstones.load(ORD), slots);
        rebuild.then_some(want)
    }

    /// Names in the index (under the lock).
    pub(super) fn name_count(&self) -> u64 {
        self.name_root().count.load(ORD)
    }

    /// Whether `extra` more names fit under [`MAX_NAMES`].
    pub(super) fn names_fit(&self, extra: u64) -> bool {
        self.name_root().count.load(ORD).saturating_add(extra) <= MAX_NAMES
    }

    /// Allocates an index block of `slots` slots, outside the lock (it may grow the pool), its
    /// magic written first and every slot empty; tagged by this process (invariant 3).
    pub(super) fn new_index(&self, slots: u64) -> Result<(Place, NonNull<u8>), ArrayError> {
        let (segment, block, ptr) = self.alloc_in(KIND_META, slots * SLOT_BYTES)?;
        let place = Place { segment, block };
        // SAFETY: a block we just allocated of `slots * 16` bytes, aligned to 128, ours alone;
        // all atomics.
        let words = unsafe { core::slice::from_raw_parts(ptr.as_ptr().cast::<SharedU64>(), (slots * 2) as usize) };
        words[0].store(INDEX_MAGIC, ORD);
        for w in &words[1..] {
            w.store(0, ORD);
        }
        if place.to_word().is_none() {
            self.free_name_block(place);
            return Err(ArrayError::Shape { shape: vec![slots], why: "a name index beyond 1 TiB segments" });
        }
        Ok((place, ptr))
    }

    /// Replaces the index by `new` (`None`: no index, when there is no name), under the lock
    /// (invariant 6): intent, copy of the live slots, disown, the commit store, the old one freed.
    pub(super) fn resize_index(&self, new: Option<Place>) {
        let root = self.name_root();
        // Only an index is freed: a root word that names another block (written by a buggy or
        // hostile process) is dropped, never freed (found in review: it freed an array header).
        let old = if self.index().is_some() { root.index.load(ORD) } else { 0 };
        if new.is_none() && self.index().is_some_and(|i| i.live().next().is_some()) {
            // `count` said no name but the slots hold some (a count a buggy process wrote):
            // the index stays, recounted.
            self.recount_names();
            return;
        }
        let mut live = 0;
        let new_word = new.and_then(Place::to_word).unwrap_or(0);
        self.intend(OP_RESIZE, [old, new_word, 0, 0]);
        kill_points::reached(KillPoint::ResizeIntent);
        if let Some(new) = new {
            // Resolved before anything changes: a block that does not resolve (it cannot: we
            // hold it) leaves the index as it is.
            let Some(fresh) = self.block_words(new).map(|words| Index { words }) else {
                self.free_name_block(new);
                root.op.store(OP_NONE, ORD);
                return;
            };
            if let Some(current) = self.index() {
                for (_, h, place) in current.live() {
                    if let Some(slot) = fresh.probe(h).find(|s| fresh.hash_at(*s) == EMPTY) {
                        fresh.put(slot, h, place);
                        live += 1;
                    }
                }
            }
            if let Ok(meta) = self.meta_segment(new.segment) {
                let _ = meta.arena.disown(new.block);
            }
        }
        kill_points::reached(KillPoint::ResizeFilled);
        // The commit (invariant 6).
        root.index.store(new_word, ORD);
        // Recounted from the copy (invariant 4), so a count a buggy process wrote heals here.
        root.count.store(live, ORD);
        root.tombstones.store(0, ORD);
        kill_points::reached(KillPoint::ResizeCommitted);
        if let Some(old) = Place::from_word(old) {
            self.free_name_block(old);
        }
        kill_points::reached(KillPoint::ResizeFreed);
        root.op.store(OP_NONE, ORD);
    }

    /// Finishes or undoes the operation a dead holder of the directory lock left (invariant 2),
    /// then recounts the root's counts. Under the lock.
    #[cold]
    pub(super) fn repair_names(&self) {
        let root = self.name_root();
        let args: Vec<u64> = root.args.iter().map(|w| w.load(ORD)).collect();
        // Invariant 3: a block the dead process still tagged goes back through arena recovery
        // first (a free here could race with another process's recovery of it); what is left
        // is disowned, and only the holder of this lock frees it.
        for (_, arena, kind) in self.open_segments() {
            if kind == KIND_META {
                arena.recover_dead_owners();
            }
        }
        kill_points::reached(KillPoint::Repairing);
        match root.op.load(ORD) {
            OP_PUBLISH => {
                let (seg, header, nonce) = (args[1] as u16, Block::from_bits(args[2]), args[3]);
                let referenced = self.meta_segment(seg).and_then(|meta| meta.header(header)).is_ok_and(|(_, h)| {
                    h.nonce.load(ORD) == nonce && h.refcount.is_held_by_among(DIRECTORY_HOLDER, &self.group())
                });
                let in_index = self.index().is_some_and(|i| i.live().any(|(_, _, p)| p == args[0]));
                let entry = Place::from_word(args[0]).and_then(|p| self.entry_at(p).map(|e| (p, load_name(e))));
                self.recount_names();
                let room = self.index().is_some_and(|i| {
                    root.count.load(ORD).saturating_add(root.tombstones.load(ORD)).saturating_add(1).saturating_mul(4)
                        <= i.slots() as u64 * 3
                });
                match (referenced, in_index, entry) {
                    (_, true, _) => {}
                    // Invariant 5: the reference was taken, so the name goes in (the dead
                    // process made room before its intent).
                    (true, false, Some((_, name))) if room => self.put_in_index(hash(&name), args[0]),
                    // Undone: the entry freed (if the dead process disowned it: arena recovery
                    // freed it otherwise), the reference dropped if it was taken.
                    (_, false, _) => {
                        if let Some(place) = Place::from_word(args[0]) {
                            self.free_entry_left(place);
                        }
                        self.drop_directory_reference(seg, header, nonce, self.registered_slot());
                    }
                }
            }
            OP_UNPUBLISH => {
                if let Some(index) = self.index() {
                    for (slot, _, _) in index.live().filter(|(_, _, p)| *p == args[0]) {
                        index.words[2 * slot].store(TOMBSTONE, ORD);
                    }
                }
                if let Some(place) = Place::from_word(args[0]) {
                    self.free_entry_left(place);
                }
                self.drop_directory_reference(
                    args[1] as u16,
                    Block::from_bits(args[2]),
                    args[3],
                    self.registered_slot(),
                );
            }
            OP_RESIZE => {
                // Invariant 6: keep the index the root names, free the other.
                let other = if root.index.load(ORD) == args[1] { args[0] } else { args[1] };
                if let Some(place) = Place::from_word(other) {
                    self.free_name_block(place);
                }
            }
            _ => {}
        }
        self.recount_names();
        root.op.store(OP_NONE, ORD);
    }

    /// Sets `count` and `tombstones` from the index's slots (invariant 4).
    fn recount_names(&self) {
        let root = self.name_root();
        let (mut live, mut dead) = (0, 0);
        if let Some(index) = self.index() {
            for s in 1..index.slots() {
                match index.hash_at(s) {
                    EMPTY => {}
                    TOMBSTONE => dead += 1,
                    _ => live += 1,
                }
            }
        }
        root.count.store(live, ORD);
        root.tombstones.store(dead, ORD);
    }

    /// Whether an operation's intent is recorded (its process died in it: invariant 2).
    #[inline]
    pub(super) fn names_need_repair(&self) -> bool {
        self.name_root().op.load(ORD) != OP_NONE
    }

    /// Bytes of blocks the name table holds: its index and one entry per name (a snapshot
    /// read without the lock).
    pub(super) fn name_table_bytes(&self) -> u64 {
        let root = self.name_root();
        let index = Place::from_word(root.index.load(ORD)).map_or(0, |p| p.block.size());
        index.saturating_add(root.count.load(ORD).saturating_mul(core::mem::size_of::<NameEntry>() as u64))
    }
}

/// Whether the directory's root says any name is registered (or may be: an operation's intent is
/// recorded). Read without the lock, by `leave` under it and by `inspect` from outside.
pub(super) fn root_has_names(root: &NameRoot) -> bool {
    root.count.load(ORD) > 0 || root.op.load(ORD) != OP_NONE
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Pool, PoolOptions, ShmArray};

    fn one(pool: &Pool, value: u64) -> ShmArray<u64> {
        ShmArray::<u64>::from_slice(pool, &[1], &[value]).unwrap()
    }

    #[test]
    fn a_root_naming_a_block_that_is_no_index_never_frees_it() {
        // A buggy or hostile process of the same user writes the root: its index names a live
        // array's header block.
        let pool = Pool::create(&PoolOptions::new()).unwrap();
        let victim = one(&pool, 7);
        let local = &victim.as_shared().local;
        let place = Place { segment: local.meta_segment, block: local.header_block };
        pool.shared.name_root().index.store(place.to_word().unwrap(), ORD);
        pool.publish("x", one(&pool, 8).as_shared()).unwrap();
        let meta = pool.shared.meta_segment(place.segment).unwrap();
        assert!(meta.arena.validate(place.block).is_ok(), "the victim's header was freed");
        assert_eq!(victim.to_vec(), vec![7]);
        assert_eq!(pool.names().unwrap(), vec!["x".to_owned()]);
    }

    #[test]
    fn counts_out_of_range_never_panic() {
        let pool = Pool::create(&PoolOptions::new()).unwrap();
        pool.publish("x", one(&pool, 1).as_shared()).unwrap();
        let root = pool.shared.name_root();
        for bad in [u64::MAX, u64::MAX / 2, 1 << 40, 0] {
            root.count.store(bad, ORD);
            root.tombstones.store(bad, ORD);
            let _ = pool.stats();
            let _ = pool.publish("y", one(&pool, 2).as_shared());
            let _ = pool.unpublish("y");
            assert!(pool.lookup("x").is_ok(), "count {bad}: the name x was lost");
        }
    }

    #[test]
    fn the_index_grows_at_three_quarters_and_shrinks_below_an_eighth() {
        assert_eq!(wanted_slots(0, 0, 0), (0, false));
        assert_eq!(wanted_slots(0, 3, 64), (0, true), "no names, no index");
        assert_eq!(wanted_slots(1, 0, 0), (MIN_SLOTS, true));
        assert_eq!(wanted_slots(48, 0, 64), (64, false));
        assert_eq!(wanted_slots(49, 0, 64), (128, true));
        assert_eq!(wanted_slots(40, 9, 64), (128, true), "deleted slots count towards the load");
        assert_eq!(wanted_slots(32, 17, 64), (64, true), "rebuilt at its size to clear them");
        assert_eq!(wanted_slots(65_536, 0, 131_072), (131_072, false));
        assert_eq!(wanted_slots(32, 0, 256), (256, false), "an eighth stays");
        assert_eq!(wanted_slots(31, 0, 256), (64, true));
        assert_eq!(wanted_slots(MAX_NAMES, 0, MAX_SLOTS), (MAX_SLOTS, false));
        assert_eq!(wanted_slots(MAX_NAMES, MAX_SLOTS / 4 + 1, MAX_SLOTS), (MAX_SLOTS, true));
    }

    #[test]
    fn hashes_never_look_like_empty_or_deleted_slots_and_places_round_trip() {
        for name in ["", "a", "b", "\0lock:x"] {
            assert!(hash(name) > TOMBSTONE);
        }
        assert_ne!(hash("a"), hash("b"));
        let p = Place { segment: 255, block: Block::from_parts(16 << 20, 1 << 20, 16383) };
        assert_eq!(Place::from_word(p.to_word().unwrap()), Some(p));
        assert_eq!(Place::from_word(0), None);
    }
}
