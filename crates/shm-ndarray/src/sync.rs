//! Shared-memory words: always real atomics (this crate is not loom-modelled; its protocols
//! are the arena's and shm-sync's, which are).

pub(crate) use shm_arena::sync::SharedU64;
