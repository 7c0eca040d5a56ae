//! Real processes sharing arenas: forked children, separately started programs, and processes
//! killed with SIGKILL at random moments, after which a survivor recovers everything and the
//! tree checks clean.
//!
//! The separately started process is this crate's `shm-arena stress` tool, which fills every
//! block it allocates with its own pattern and verifies it before freeing: a block handed to
//! two processes at once shows up as exit code 3.
#![allow(unsafe_code)] // fork, kill and waitpid in the tests themselves

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use shm_arena::{Arena, ArenaOptions, Block};
use shm_testkit::{fork, wait};

const TOOL: &str = env!("CARGO_BIN_EXE_shm-arena");

/// Unlinks a named arena when the test ends, pass or fail.
struct Unlink(String);
impl Drop for Unlink {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(format!("/dev/shm/{}", self.0));
    }
}

/// Kills and reaps a child if the test fails before it exits.
struct Reap(Option<Child>);
impl Drop for Reap {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn_stress(name: &str, seconds: u64, seed: u64, stdout: std::process::Stdio) -> Reap {
    let child = Command::new(TOOL)
        .args(["stress", name, "--seconds", &seconds.to_string(), "--seed", &seed.to_string()])
        .stdout(stdout)
        .spawn()
        .expect("spawn shm-arena stress");
    Reap(Some(child))
}

fn stress(name: &str, seconds: u64, seed: u64) -> Reap {
    spawn_stress(name, seconds, seed, std::process::Stdio::null())
}

/// A stress process that has allocated its first block (it prints `started` then): killed from
/// now on, it always leaves an owner slot to recover.
fn started_stress(name: &str, seconds: u64, seed: u64) -> Reap {
    let mut r = spawn_stress(name, seconds, seed, std::process::Stdio::piped());
    let out = r.0.as_mut().unwrap().stdout.take().unwrap();
    let mut line = String::new();
    // Bounded: the tool prints this line or exits (after `seconds` at most), closing the pipe.
    std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line).unwrap();
    assert_eq!(line, "started\n", "the stress process never allocated");
    r
}

fn finish(mut r: Reap) -> i32 {
    let status = r.0.take().unwrap().wait().unwrap();
    status.code().unwrap_or(-1)
}

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn assert_empty(a: &Arena) {
    a.trim(); // our own cache
    let report = a.check().unwrap_or_else(|e| panic!("{e}: {:?} {:?}", e.violations, e.owner_mismatches));
    assert_eq!(report.blocks_in_use, 0, "{report:?}");
    assert_eq!(report.blocks_cached, 0, "{report:?}");
}

#[test]
fn separately_started_processes_share_an_arena_by_name() {
    let a = ArenaOptions::new(8 << 20).create().unwrap();
    let name = a.name().unwrap().to_owned();
    let _g = Unlink(name.clone());
    let workers: Vec<_> = (0..2).map(|i| stress(&name, 1, 11 + i)).collect();
    for w in workers {
        assert_eq!(finish(w), 0, "a stress process saw another one's pattern in its block");
    }
    assert_eq!(a.recover_dead_owners().owners, 0, "they unregistered on a clean exit");
    assert_empty(&a);
    assert_eq!(a.stats().live_owners, 0, "`a` never allocated: it holds no owner slot");
}

#[test]
fn processes_killed_at_random_are_recovered_while_survivors_go_on() {
    let a = ArenaOptions::new(16 << 20).create().unwrap();
    let name = a.name().unwrap().to_owned();
    let _g = Unlink(name.clone());
    let survivors: Vec<_> = (0..2).map(|i| stress(&name, 3, 100 + i)).collect();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut kills = 0;
    let mut recovered = 0;
    let deadline = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < deadline {
        let mut victim = started_stress(&name, 60, 1000 + kills);
        std::thread::sleep(Duration::from_micros(rng.below(20_000)));
        victim.0.as_mut().unwrap().kill().unwrap(); // SIGKILL
        victim.0.take().unwrap().wait().unwrap();
        kills += 1;
        // Recovery runs while the survivors keep allocating and freeing.
        recovered += a.recover_dead_owners().owners;
    }
    for s in survivors {
        assert_eq!(finish(s), 0, "a survivor's block was overwritten: two owners of one block");
    }
    recovered += a.recover_dead_owners().owners;
    assert!(kills >= 10, "only {kills} kills");
    // Every victim was killed after its first allocation: each left its owner slot.
    assert_eq!(recovered as u64, kills, "{recovered} recovered of {kills} killed");
    assert_empty(&a);
    let s = a.stats();
    assert_eq!(s.free_bytes, s.capacity, "every byte came back");
    // Victims died between reserving and setting bits, or clearing and punching: a trim gives
    // every page back all the same, and the bitmap agrees.
    a.release_free();
    assert_eq!(a.stats().reserved_data_bytes, 0);
    let held = std::fs::metadata(format!("/dev/shm/{name}")).map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512);
    assert_eq!(held.unwrap(), s.metadata_bytes, "only the metadata is held after a trim");
    a.check().unwrap();
}

#[test]
fn forked_children_share_blocks_with_the_parent() {
    let a = ArenaOptions::new(1 << 20).create_anonymous().unwrap();
    let parent_block = a.alloc(4096).unwrap();
    // SAFETY: the parent holds the block alone until the child reads it after fork.
    unsafe { a.bytes_mut(parent_block).unwrap().fill(0x11) };
    let parent_tag = a.owner_tag().unwrap();
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two descriptors.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let pid = fork(|| {
        // The child has its own owner slot, sees the parent's block, and allocates its own.
        if a.owner_tag().unwrap() == parent_tag {
            return 2;
        }
        // SAFETY: the parent does not write its block while the child runs.
        if !unsafe { a.bytes(parent_block).unwrap() }.iter().all(|b| *b == 0x11) {
            return 3;
        }
        let mine = a.alloc(1000).unwrap();
        // SAFETY: our block, until the parent frees it after we exit.
        unsafe { a.bytes_mut(mine).unwrap().fill(0x22) };
        a.disown(mine).unwrap(); // it must outlive this process
        let bits = mine.to_bits().to_ne_bytes();
        // SAFETY: writes 8 bytes from a valid buffer to the pipe.
        unsafe { libc::write(fds[1], bits.as_ptr().cast(), 8) };
        0
    });
    assert_eq!(wait(pid), 0);
    let mut bits = [0u8; 8];
    // SAFETY: reads 8 bytes into a valid buffer.
    assert_eq!(unsafe { libc::read(fds[0], bits.as_mut_ptr().cast(), 8) }, 8);
    // SAFETY: closing our two pipe descriptors.
    unsafe {
        libc::close(fds[0]);
    }
    // SAFETY: as above.
    unsafe {
        libc::close(fds[1]);
    }
    let childs = Block::from_bits(u64::from_ne_bytes(bits));
    // SAFETY: the child is gone; nobody writes the block.
    assert!(unsafe { a.bytes(childs).unwrap() }.iter().all(|b| *b == 0x22));
    let r = a.recover_dead_owners();
    assert_eq!(r.owners, 1, "the child exited without unregistering");
    assert_eq!(r.blocks_freed, 0, "its only block was disowned");
    a.free(childs).unwrap();
    a.free(parent_block).unwrap();
    assert_empty(&a);
}

#[test]
fn children_killed_mid_operation_never_corrupt_the_tree() {
    let a = ArenaOptions::new(4 << 20).min_block(64).create_anonymous().unwrap();
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    let keep: Vec<Block> = (0..8).map(|i| a.alloc(64 << i).unwrap()).collect();
    for (i, b) in keep.iter().enumerate() {
        // SAFETY: the parent's blocks; children never free or write them.
        unsafe { a.bytes_mut(*b).unwrap().fill(i as u8) };
    }
    let mut recovered = 0;
    for round in 0..25u64 {
        let mut fds = [0; 2];
        // SAFETY: `fds` is a valid array of two descriptors.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let pid = fork(|| {
            let mut r = Rng(round * 7919 + 1);
            let mut live = Vec::new();
            let mut announced = false;
            loop {
                if live.len() < 64 && r.below(2) == 0 {
                    if let Ok(b) = a.alloc(16 + r.below(20_000)) {
                        live.push(b);
                        if !announced {
                            // Registered: the parent kills us at a random moment from now on.
                            // SAFETY: writes 1 byte from a valid buffer to the pipe.
                            unsafe { libc::write(fds[1], [1u8].as_ptr().cast(), 1) };
                            announced = true;
                        }
                    }
                } else if !live.is_empty() {
                    let b = live.swap_remove(r.below(live.len() as u64) as usize);
                    a.free(b).unwrap();
                }
            }
        });
        let mut ready = libc::pollfd { fd: fds[0], events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd; a bounded wait for the child's first allocation.
        let polled = unsafe { libc::poll(&mut ready, 1, 60_000) };
        std::thread::sleep(Duration::from_micros(rng.below(8_000)));
        // SAFETY: `pid` is our child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        assert_eq!(wait(pid), -libc::SIGKILL);
        // SAFETY: closing our pipe descriptors (the child is gone).
        unsafe { libc::close(fds[0]) };
        // SAFETY: as above.
        unsafe { libc::close(fds[1]) };
        assert_eq!(polled, 1, "round {round}: the child never allocated");
        let r = a.recover_dead_owners();
        assert_eq!(r.owners, 1, "round {round}: the child was killed after registering");
        recovered += r.owners;
        let report = a.check().unwrap_or_else(|e| panic!("round {round}: {e}: {:?}", e.violations));
        assert_eq!(report.blocks_in_use, keep.len() as u64, "round {round}: only the parent's blocks remain");
    }
    assert_eq!(recovered, 25);
    for (i, b) in keep.iter().enumerate() {
        // SAFETY: as above.
        assert!(unsafe { a.bytes(*b).unwrap() }.iter().all(|x| *x == i as u8), "a child wrote into the parent's block");
        a.free(*b).unwrap();
    }
    assert_empty(&a);
    let s = a.stats();
    assert_eq!(s.largest_free_block, 4 << 20, "everything coalesced after the kills");
}
