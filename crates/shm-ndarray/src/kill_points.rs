//! Named points inside the pool's multi-step protocols where a test can make this process die
//! (SIGKILL, as the OOM killer would), to check that the survivors finish or undo what it
//! started.
//!
//! A test forks a child, arms one point in it ([`arm`], feature `kill-points`) and drives it
//! there. Without the feature no point can be armed and each compiles to nothing; with it, a
//! point costs one relaxed load.

#[cfg(feature = "kill-points")]
use crate::sync::SharedU64;

/// The points where an armed process dies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum KillPoint {
    /// Not armed.
    Never = 0,
    /// Name publish: intent recorded, entry still tagged.
    PublishIntent,
    /// Name publish: entry disowned, no reference taken.
    PublishDisowned,
    /// Name publish: the directory's reference taken, the entry not in the index.
    PublishReferenced,
    /// Name publish: in the index, intent not cleared.
    PublishInserted,
    /// Name delete: intent recorded.
    DeleteIntent,
    /// Name delete: slot deleted, entry not freed.
    DeleteRemoved,
    /// Name delete: entry freed, reference not released.
    DeleteFreed,
    /// Name delete: reference released, intent not cleared.
    DeleteReleased,
    /// Name index resize: intent recorded, new index tagged.
    ResizeIntent,
    /// Name index resize: new index filled and disowned, not committed.
    ResizeFilled,
    /// Name index resize: committed, old index not freed.
    ResizeCommitted,
    /// Name index resize: old index freed, intent not cleared.
    ResizeFreed,
    /// Name table repair: dead owners' blocks recovered, nothing repaired yet.
    Repairing,
    /// Array free: the freer learned its array died, nothing done yet.
    FreeStart,
    /// Array free: the header says the data block is being given back, the arena does not yet.
    FreeDataMarked,
    /// Array free: the data block is given back.
    FreeDataFreed,
    /// Array free: the header block is the freer's, its magic still set.
    FreeHeaderAdopted,
    /// Name table: an entry or index block's magic cleared, the block not freed yet.
    NameBlockCleared,
}

/// The armed point, as its number (0: none).
#[cfg(feature = "kill-points")]
static ARMED: SharedU64 = SharedU64::new(0);

/// Makes this process SIGKILL itself when it next reaches `point` (a test hook).
#[cfg(feature = "kill-points")]
pub fn arm(point: KillPoint) {
    ARMED.store(point as u64, core::sync::atomic::Ordering::Relaxed);
}

/// Dies here if `point` is armed.
#[inline(always)]
pub(crate) fn reached(_point: KillPoint) {
    #[cfg(feature = "kill-points")]
    if ARMED.load(core::sync::atomic::Ordering::Relaxed) == _point as u64 {
        let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    }
}
