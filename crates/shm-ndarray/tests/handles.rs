//! Handles: every dtype and view round-trips, across fork and into a separately started
//! process; stale, crafted and overflowing handles are refused without touching other memory;
//! a cancelled handle gives its token back; a forked child never repeats its parent's nonces.
#![allow(unsafe_code)] // a shared page read across fork

use std::process::Command;

use shm_ndarray::{DType, Handle, HandleError, Pool, PoolOptions, ShmArray};
use shm_testkit::{fork, wait, SharedPage};

const TOOL: &str = env!("CARGO_BIN_EXE_shm-ndarray");

/// 4 MiB data segments, up to 16 MiB.
fn small() -> PoolOptions {
    PoolOptions::new().segment_capacity(4 << 20).max_size(16 << 20)
}

/// 1 MiB data segments, up to 8 MiB.
fn one_mib_segments() -> PoolOptions {
    PoolOptions::new().segment_capacity(1 << 20).max_size(8 << 20)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn every_dtype_round_trips_through_a_handle() {
    let pool = Pool::create(&small()).unwrap();
    for (descr, size) in [
        ("|b1", 1),
        ("|i1", 1),
        ("|u1", 1),
        ("<i2", 2),
        ("<u2", 2),
        ("<i4", 4),
        ("<u4", 4),
        ("<i8", 8),
        ("<u8", 8),
        ("<f2", 2),
        ("<f4", 4),
        ("<f8", 8),
        ("<f16", 16),
        ("<c8", 8),
        ("<c16", 16),
        ("<M8[ns]", 8),
        ("<m8[s]", 8),
        ("|S5", 5),
        ("<U3", 12),
        ("|V7", 7),
        ("[('x', '<f8'), ('y', '<i2'), ('s', '|S3')]", 13),
    ] {
        let dtype = DType::new(descr, size).unwrap();
        let a = pool.empty(&dtype, &[3, 2], false).unwrap();
        let b = pool.attach(&Handle::from_bytes(&a.handle().unwrap().to_bytes()).unwrap()).unwrap();
        assert_eq!(b.dtype(), &dtype, "{descr}");
        assert_eq!((b.shape(), b.strides()), (&[3, 2][..], &[2 * size as i64, size as i64][..]));
        assert!(a.same_array(&b));
    }
    assert!(DType::new("|O", 8).is_err());
}

#[test]
fn views_travel_with_their_own_offset_shape_and_strides() {
    let pool = Pool::create(&small()).unwrap();
    let mut a = ShmArray::<f64>::from_slice(&pool, &[4, 5], &(0..20).map(f64::from).collect::<Vec<_>>()).unwrap();
    // Column 2, rows reversed: offset of element (3, 2), stride -5 elements.
    let column = a.as_shared().view((3 * 5 + 2) * 8, &[4], &[-40]).unwrap();
    let got = pool.attach(&Handle::from_bytes(&column.handle().unwrap().to_bytes()).unwrap()).unwrap();
    assert_eq!((got.offset(), got.shape(), got.strides()), (136, &[4][..], &[-40][..]));
    // SAFETY: reading 4 elements along the validated view; nobody writes meanwhile.
    let read = |i: isize| unsafe { got.as_ptr().cast::<f64>().wrapping_offset(-5 * i).read() };
    assert_eq!((0..4).map(read).collect::<Vec<_>>(), vec![17.0, 12.0, 7.0, 2.0]);
    a.as_slice_mut().unwrap()[2] = -1.0;
    assert_eq!(read(3), -1.0, "the same memory");
    assert!(a.as_shared().view(0, &[21], &[8]).is_err(), "past the end");
    assert!(a.as_shared().view(8, &[4], &[-40]).is_err(), "before the start");
}

#[test]
fn a_forked_child_attaches_writes_and_the_parent_sees_it() {
    let pool = Pool::create(&small()).unwrap();
    let a = ShmArray::<f64>::zeros(&pool, &[1000]).unwrap();
    let bytes = a.handle().unwrap().to_bytes();
    let pid = fork(|| {
        let mut b = ShmArray::<f64>::attach(&pool, &Handle::from_bytes(&bytes).unwrap()).unwrap();
        b.as_slice_mut().unwrap().fill(7.0);
        0
    });
    assert_eq!(wait(pid), 0);
    assert!(a.to_vec().iter().all(|x| *x == 7.0));
    let r = pool.collect();
    assert_eq!(r.dead_processes, 1, "the child left without unregistering");
    drop(a);
    assert_eq!(pool.stats().used, 0, "freed once the parent let go");
}

#[test]
fn a_separately_started_process_attaches_by_handle() {
    let pool = Pool::create(&small()).unwrap();
    let a = ShmArray::<f64>::from_slice(&pool, &[4], &[1.0, 2.0, 3.0, 4.5]).unwrap();
    let h = hex(&a.handle().unwrap().to_bytes());
    let out = Command::new(TOOL).args(["sum", pool.name(), &h]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "10.5");
    let h = hex(&a.handle().unwrap().to_bytes());
    assert!(Command::new(TOOL).args(["fill", pool.name(), &h, "2"]).status().unwrap().success());
    assert_eq!(a.to_vec(), vec![2.0; 4]);
}

#[test]
fn stale_and_crafted_handles_are_refused_without_touching_other_memory() {
    let pool = Pool::create(&small()).unwrap();
    let a = ShmArray::<f64>::zeros(&pool, &[16]).unwrap();
    let untracked = a.as_shared().untracked_handle();
    drop(a);
    assert_eq!(pool.attach(&untracked).unwrap_err(), HandleError::Stale, "the array was freed");
    let b = ShmArray::<f64>::zeros(&pool, &[16]).unwrap(); // likely the same place
    assert_eq!(pool.attach(&untracked).unwrap_err(), HandleError::Stale, "its place holds another array");
    let good = b.handle().unwrap().to_bytes();
    // Every truncation, and every single-byte corruption, is an error or a view of `b` itself.
    for len in 0..good.len() {
        assert!(Handle::from_bytes(&good[..len]).is_err());
    }
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    for i in 0..good.len() {
        for bit in [1u8, 0x80, 0xFF] {
            let mut bad = good.clone();
            bad[i] ^= bit;
            rng ^= rng << 13;
            rng ^= rng >> 7;
            if let Ok(h) = Handle::from_bytes(&bad) {
                if let Ok(view) = pool.attach(&h) {
                    assert!(view.same_array(b.as_shared()), "byte {i}: attached to another array");
                }
            }
        }
    }
    let other = Pool::create(&small()).unwrap();
    assert!(matches!(other.attach(&Handle::from_bytes(&good).unwrap()), Err(HandleError::WrongPool { .. })));
}

#[test]
fn a_handle_whose_view_overflows_is_refused() {
    let pool = Pool::create(&one_mib_segments()).unwrap();
    let a = pool.empty(&DType::of::<u8>(), &[64, 64], false).unwrap();
    let mut bytes = a.untracked_handle().to_bytes();
    // shape = [u64::MAX, u64::MAX], strides = [i64::MAX, i64::MAX]: the sum of spans overflowed.
    bytes[64..80].copy_from_slice(&[0xFF; 16]);
    bytes[80..88].copy_from_slice(&i64::MAX.to_le_bytes());
    bytes[88..96].copy_from_slice(&i64::MAX.to_le_bytes());
    let h = Handle::from_bytes(&bytes).unwrap();
    assert!(matches!(pool.attach(&h), Err(HandleError::Invalid(_))));
}

#[test]
fn a_handle_naming_a_data_segment_as_its_header_is_refused() {
    let pool = Pool::create(&one_mib_segments()).unwrap();
    // Larger than 4 KiB: its data is a block of segment 1, the first data segment.
    let a = pool.empty(&DType::of::<u8>(), &[8192], false).unwrap();
    let mut bytes = a.untracked_handle().to_bytes();
    bytes[6..8].copy_from_slice(&1u16.to_le_bytes());
    let h = Handle::from_bytes(&bytes).unwrap();
    assert!(matches!(pool.attach(&h), Err(HandleError::Invalid(_))));
}

#[test]
fn a_forked_child_does_not_repeat_its_parents_nonces() {
    let pool = Pool::create(&one_mib_segments()).unwrap();
    let page = SharedPage::new();
    // SAFETY: a u64-sized, aligned atomic at offset 0 of the zeroed page.
    let slot: &shm_arena::sync::SharedU64 = unsafe { page.at(0) };
    let nonce =
        |a: &shm_ndarray::SharedArray| u64::from_le_bytes(a.untracked_handle().to_bytes()[32..40].try_into().unwrap());
    let pid = fork(|| {
        let y = pool.empty(&DType::of::<u8>(), &[8], false).unwrap();
        slot.store(nonce(&y), std::sync::atomic::Ordering::SeqCst);
        0
    });
    let x = pool.empty(&DType::of::<u8>(), &[8], false).unwrap();
    assert_eq!(wait(pid), 0);
    assert_ne!(nonce(&x), slot.load(std::sync::atomic::Ordering::SeqCst));
    pool.collect();
}

#[test]
fn cancelling_a_handle_gives_its_token_back_and_frees_an_array_nobody_else_holds() {
    let pool = Pool::create(&small()).unwrap();
    let before = pool.stats();
    let f64s = DType::of::<f64>();
    // Big enough for a data block of its own: freed memory shows in `used`.
    let a = pool.empty(&f64s, &[1 << 17], false).unwrap();
    let sent = a.handle().unwrap();
    let kept = a.handle().unwrap();
    drop(a);
    assert_eq!(pool.stats().used, before.used + (1 << 20), "two tokens keep it alive");

    pool.cancel(&sent).unwrap();
    assert!(matches!(pool.cancel(&sent), Err(HandleError::Stale)), "a token is given back once");
    assert!(pool.stats().used > before.used, "the other token still holds it");
    let attached = pool.attach(&kept).unwrap();
    assert!(matches!(pool.cancel(&kept), Err(HandleError::Stale)), "a claimed token cannot be cancelled");
    drop(attached);
    assert_eq!(pool.stats().used, before.used, "freed when the last reference went");

    let b = pool.empty(&f64s, &[1 << 17], false).unwrap();
    let last = b.handle().unwrap();
    drop(b);
    pool.cancel(&last).unwrap();
    let after = pool.stats();
    assert_eq!((after.used, after.arrays), (before.used, before.arrays), "the token was its only reference");
    assert!(matches!(pool.attach(&last), Err(HandleError::Stale)));

    let untracked = pool.empty(&f64s, &[4], false).unwrap();
    pool.cancel(&untracked.untracked_handle()).unwrap();
    let other = Pool::create(&small()).unwrap();
    assert!(matches!(other.cancel(&last), Err(HandleError::WrongPool { .. })));
    pool.check().unwrap();
}

#[test]
fn a_full_token_table_or_a_senders_full_share_refuses_a_handle_and_takes_nothing() {
    let pool = Pool::create(&small().token_slots(4)).unwrap();
    let a = pool.empty(&DType::of::<u8>(), &[16], false).unwrap();
    // One process holds at most half the slots.
    let sent: Vec<Handle> = (0..2).map(|_| a.handle().unwrap()).collect();
    let err = a.handle().unwrap_err();
    assert_eq!(err, HandleError::SenderQuota { quota: 2, slots: 4 });
    assert!(err.to_string().contains("its share of the 4 transfer token slots"), "{err}");
    assert_eq!(pool.stats().handles_in_flight, 2, "the refused handle took nothing");
    // Two other processes take the other two slots (their tokens stay pending after they exit);
    // a fourth process, with none of its own, finds the table full.
    for expect_full in [false, false, true] {
        let pid = fork(|| match (a.handle(), expect_full) {
            (Ok(_), false) => 0,
            (Err(HandleError::TokensFull { slots: 4 }), true) => 0,
            _ => 1,
        });
        assert_eq!(wait(pid), 0, "expected full: {expect_full}");
    }
    assert_eq!((pool.stats().handles_in_flight, pool.stats().token_slots), (4, 4));
    pool.collect();
    assert_eq!(pool.reclaim_tokens_older_than(std::time::Duration::ZERO), 4);
    let again = a.handle().unwrap();
    pool.cancel(&again).unwrap();
    assert!(matches!(pool.cancel(&sent[0]), Err(HandleError::Stale)), "reclaimed already");
    assert_eq!(pool.stats().handles_in_flight, 0);
    pool.check().unwrap();
}

#[test]
fn a_process_that_finds_every_slot_taken_gets_pool_full_from_attach_and_create() {
    let pool = Pool::create(&small().process_slots(1)).unwrap();
    let a = ShmArray::<u8>::zeros(&pool, &[16]).unwrap(); // the parent takes the one slot
    let bytes = a.handle().unwrap().to_bytes();
    let pid = fork(|| {
        let h = Handle::from_bytes(&bytes).unwrap();
        let attach = matches!(pool.attach(&h), Err(HandleError::PoolFull { slots: 1, .. }));
        let create = matches!(
            pool.empty(&DType::of::<u8>(), &[16], false),
            Err(shm_ndarray::ArrayError::Grow(shm_ndarray::PoolError::Full { slots: 1, .. }))
        );
        i32::from(!attach) | i32::from(!create) << 1
    });
    assert_eq!(wait(pid), 0, "1: attach, 2: create did not say the pool is full");
    let h = Handle::from_bytes(&bytes).unwrap();
    drop(pool.attach(&h).unwrap()); // the parent, a member, claims the token
}

#[test]
fn a_header_whose_description_is_not_ascii_is_refused_without_a_panic() {
    let pool = Pool::create(&small()).unwrap();
    let a = pool.empty(&DType::new("|S5", 5).unwrap(), &[2], false).unwrap();
    let h = a.handle().unwrap();
    // Another process of the pool (buggy or hostile) rewrites the description "|S5" in the
    // header; "<é" has the same length in bytes and is valid UTF-8. A small array's data follows
    // its header in the same block, so the description is found just before the data.
    let data = a.base_ptr().as_ptr();
    let at = (3..=256)
        .map(|back| data.wrapping_sub(back))
        // SAFETY: the bytes searched lie in the metadata segment's mapping, before the array's
        // data (its header block and the segment's layout before it).
        .find(|p| unsafe { std::slice::from_raw_parts(*p, 3) } == b"|S5")
        .expect("the description precedes the inline data");
    // SAFETY: the three description bytes found just above, in the array's header block.
    unsafe { at.copy_from_nonoverlapping("<\u{e9}".as_ptr(), 3) };
    drop(a); // the token keeps it alive; attaching pins it and reads the header again
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| pool.attach(&h).map(|_| ())));
    assert!(matches!(r, Ok(Err(HandleError::Invalid(_)))), "a corrupt header is an error, never a panic: {r:?}");
}

#[test]
fn a_unicode_description_whose_size_overflows_is_refused_without_a_panic() {
    // 2^62 + 1 characters of 4 bytes: the size wraps to 4 bytes in a release build.
    let r = std::panic::catch_unwind(|| DType::new("<U4611686018427387905", 4).is_err());
    assert!(matches!(r, Ok(true)), "refused as an error, not accepted and not a panic: {r:?}");
}

#[test]
fn a_token_generation_the_slot_never_had_is_refused_even_in_its_top_bits() {
    // A token slot's state word is `generation << 2 | state`: the generation has 62 bits. A
    // handle carries 64 (bytes 44..48 and 56..60), and the top two are shifted out in the
    // comparison, so a handle with bit 62 or 63 set claims the real token (review: a bit
    // flip that is not refused; bytes 60..64, "reserved", are not checked either).
    let pool = Pool::create(&small()).unwrap();
    let a = pool.empty(&DType::of::<f64>(), &[4], false).unwrap();
    for (byte, bit) in [(59, 0x40), (59, 0x80), (60, 0x01)] {
        let mut bytes = a.handle().unwrap().to_bytes();
        bytes[byte] ^= bit;
        // Refused when decoded, or else when attached.
        let refused = Handle::from_bytes(&bytes).map_or(true, |bad| pool.attach(&bad).is_err());
        assert!(refused, "byte {byte} bit {bit:#x}: a handle with a generation the token never had was attached");
    }
}
