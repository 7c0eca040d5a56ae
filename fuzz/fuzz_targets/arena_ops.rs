//! Operation sequences on an anonymous arena, checked against a model (`shm_arena_fuzz::arena_ops`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shm_arena_fuzz::run_arena_ops(data));
