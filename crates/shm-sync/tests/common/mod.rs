//! Helpers shared by the loom models of this crate (`tests/loom_*.rs`): the model runner and
//! a refcount with token slots.
// Each model file is its own test binary and uses only part of this module.
#![allow(dead_code)]

use loom::sync::Arc;
use shm_sync::holders::HolderBitmap;
use shm_sync::{AnyProcess, RefCount, TokenSlot, TokenTable};

/// Runs `f` under loom, with the preemption bound fixed at 2 unless `LOOM_MAX_PREEMPTIONS`
/// sets one (xtask sets 2; see `LOOM_MAX_PREEMPTIONS` in `xtask/src/test.rs` for why).
pub(crate) fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(2);
    }
    builder.check(f);
}

/// A refcount on target 7 with two token slots.
pub(crate) struct Fixture {
    /// The record under test.
    pub(crate) rc: RefCount<HolderBitmap<1>>,
    /// Its token slots.
    pub(crate) slots: Vec<TokenSlot>,
}

/// A [`Fixture`] held by `holders` (the first one creates it, the others acquire it).
pub(crate) fn fixture(holders: &[u32]) -> Arc<Fixture> {
    let f = Fixture { rc: RefCount::new(), slots: (0..2).map(|_| TokenSlot::new()).collect() };
    f.rc.init(7, holders[0]);
    let t = TokenTable::new(&f.slots);
    for h in &holders[1..] {
        f.rc.acquire(*h, &t, &AnyProcess).unwrap();
    }
    Arc::new(f)
}
