//! Opening segments made of arbitrary or mutated bytes (`shm_arena_fuzz::open_header`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shm_arena_fuzz::run_open_header(data));
