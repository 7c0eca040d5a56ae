//! Two measurements between real processes (2 processes sharing one page):
//!
//! 1. Cross-process wake latency: ping-pong through two `Event`s; half a round trip is the
//!    time from one process's notify to the other running.
//! 2. Death detection: a child takes a `RobustMutex` and is SIGKILLed; the parent, already
//!    waiting on the lock, measures the time from the kill to taking the lock with
//!    `Locked::OwnerDied` (the target is under 100 ms; waiters recheck every `RECHECK`).
//!
//! Run with `cargo run --release -p shm-sync --example wake_latency`.
#![allow(unsafe_code)] // fork, kill, and typed views of the shared page

use std::time::{Duration, Instant};

use shm_sync::{Event, Locked, RobustMutex, Wait, RECHECK};
use shm_testkit::SharedPage;

/// The value at `offset` of the shared page.
fn at<T>(page: &'static SharedPage, offset: usize) -> &'static T {
    // SAFETY: zeroed shared memory is a valid Event/RobustMutex (all-zero atomics) at these
    // aligned offsets inside the page, which lives for the whole program (leaked below).
    unsafe { page.at(offset) }
}

fn main() {
    let page: &'static SharedPage = Box::leak(Box::new(SharedPage::new()));
    let ping: &Event = at(page, 0);
    let pong: &Event = at(page, 64);
    const ROUNDS: u32 = 20_000;
    // SAFETY: the child only runs the loop below and `_exit`s.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let mut seen = ping.sequence();
        for _ in 0..ROUNDS {
            match ping.wait_for_change(seen, Some(Duration::from_secs(5))) {
                Wait::Changed(s) => seen = s,
                Wait::TimedOut => break,
            }
            pong.notify_all();
        }
        // SAFETY: ends the child.
        unsafe { libc::_exit(0) };
    }
    std::thread::sleep(Duration::from_millis(50));
    let mut seen = pong.sequence();
    let started = Instant::now();
    for _ in 0..ROUNDS {
        let l = pong.listen();
        ping.notify_all();
        match l.wait(seen, Some(Duration::from_secs(5))) {
            Wait::Changed(s) => seen = s,
            Wait::TimedOut => panic!("the child stopped answering"),
        }
    }
    let rtt = started.elapsed() / ROUNDS;
    // SAFETY: reaping our child.
    unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
    println!(
        "cross-process wake: {:.2} µs per round trip, {:.2} µs one way ({ROUNDS} round trips)",
        rtt.as_secs_f64() * 1e6,
        rtt.as_secs_f64() * 5e5
    );

    let m: &RobustMutex = at(page, 128);
    let mut detections = Vec::new();
    for _ in 0..10 {
        // SAFETY: the child takes the lock, keeps it, and waits to be killed.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            std::mem::forget(m.lock().unwrap().into_guard());
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        while m.holder() != Some(pid as u32) {
            std::thread::sleep(Duration::from_micros(100));
        }
        let killer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            let at = Instant::now();
            // SAFETY: `pid` is our child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            at
        });
        let got = m.lock().unwrap();
        let taken = Instant::now();
        let killed = killer.join().unwrap();
        assert!(matches!(got, Locked::OwnerDied(_)));
        let mut g = got.into_guard();
        g.mark_consistent();
        drop(g);
        // SAFETY: reaping our child.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        detections.push(taken.saturating_duration_since(killed));
    }
    detections.sort();
    println!(
        "owner death detected: median {:.1} ms, max {:.1} ms (waiters recheck every {} ms; target < 100 ms)",
        detections[detections.len() / 2].as_secs_f64() * 1e3,
        detections[detections.len() - 1].as_secs_f64() * 1e3,
        RECHECK.as_millis()
    );
}
