//! Decoding and attaching arbitrary or mutated handles (`shm_arena_fuzz::handle_attach`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shm_arena_fuzz::run_handle_attach(data));
