//! Shared-memory words and process facts: always real atomics (this crate is not
//! loom-modelled; its protocols are the arena's and shm-sync's, which are). The pool's code
//! takes them from here only, so one line says where they come from (house style 6).

pub(crate) use shm_platform::process::fork_generation;
pub(crate) use shm_platform::sync::SharedU64;
