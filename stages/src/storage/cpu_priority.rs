//! The storage engine's own threads at a lower CPU priority: the controller's second lever.
//!
//! Token gates pace the background work shoal starts (hints, repairs, exchanges), but not
//! what it costs later: fjall flushes and compacts the merged data on its own `fjall:worker`
//! threads, where no gate reaches. ScyllaDB gives compaction fewer CPU shares than queries;
//! on Linux a thread's nice value is that share. Ten steps lower, a thread weighs about a
//! tenth: a foreground thread that wakes preempts it at once, and it still has every idle
//! cycle, so flushes keep up on a node that is not saturated (fjall halts writes at 4 sealed
//! memtables, so starving them would be worse). Measured alone in issue 9's benchmark it
//! made no visible difference (the cost there was a hint scan, fixed in the store); at
//! saturation it cost no throughput.

use std::io;

/// Name fjall gives its flush and compaction worker threads.
pub const ENGINE_THREAD_NAME: &str = "fjall:worker";

/// Every thread of process `pid`: its kernel id and name (`/proc/PID/task/*/comm`).
#[cfg(target_os = "linux")]
pub fn threads_of(pid: u32) -> io::Result<Vec<(u32, String)>> {
    let mut threads = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let entry = entry?;
        let Some(tid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        // A thread may exit between the listing and the read: skip it.
        let Ok(comm) = std::fs::read_to_string(entry.path().join("comm")) else {
            continue;
        };
        threads.push((tid, comm.trim_end().to_string()));
    }
    Ok(threads)
}

/// The kernel ids of this process's threads named `name`.
#[cfg(target_os = "linux")]
pub fn threads_named(name: &str) -> io::Result<Vec<u32>> {
    Ok(threads_of(std::process::id())?
        .into_iter()
        .filter(|(_, comm)| comm == name)
        .map(|(tid, _)| tid)
        .collect())
}

/// The threads of this process named `name` (none found on this platform).
#[cfg(not(target_os = "linux"))]
pub fn threads_named(_name: &str) -> io::Result<Vec<u32>> {
    Ok(Vec::new())
}

/// Every thread of process `pid` (none found on this platform).
#[cfg(not(target_os = "linux"))]
pub fn threads_of(_pid: u32) -> io::Result<Vec<(u32, String)>> {
    Ok(Vec::new())
}

/// A thread's nice value (Linux keeps one per thread, so `PRIO_PROCESS` with a thread id
/// names that thread alone).
#[cfg(target_os = "linux")]
pub fn thread_nice(tid: u32) -> io::Result<i32> {
    Ok(rustix::process::getpriority_process(Some(pid(tid)?))?)
}

/// Lowers one thread's priority by `steps` of nice below its own (capped at 19: raising
/// nice needs no privilege, so a node started under `nice` is never raised).
pub fn lower_priority(tid: u32, steps: i32) -> io::Result<()> {
    let nice = thread_nice(tid)?;
    set_thread_nice(tid, (nice + steps).min(19))
}

/// Sets one thread's nice value.
#[cfg(target_os = "linux")]
fn set_thread_nice(tid: u32, nice: i32) -> io::Result<()> {
    Ok(rustix::process::setpriority_process(Some(pid(tid)?), nice)?)
}

#[cfg(target_os = "linux")]
fn pid(tid: u32) -> io::Result<rustix::process::Pid> {
    i32::try_from(tid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("no thread id {tid}")))
}

/// A thread's nice value (0 on this platform).
#[cfg(not(target_os = "linux"))]
pub fn thread_nice(_tid: u32) -> io::Result<i32> {
    Ok(0)
}

/// Sets one thread's nice value (not on this platform: does nothing).
#[cfg(not(target_os = "linux"))]
fn set_thread_nice(_tid: u32, _nice: i32) -> io::Result<()> {
    Ok(())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// Goal: a nice value set through a thread id changes that thread alone (Linux keeps one
    /// per thread), and the thread is found by its name.
    #[test]
    fn a_thread_found_by_name_gets_its_own_nice_value_and_no_other_does() {
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let (ready_tx, ready_rx) = mpsc::channel::<()>();
        let named = std::thread::Builder::new()
            .name("shoal-nice-test".into())
            .spawn(move || {
                let _ = ready_tx.send(());
                let _ = stop_rx.recv();
            })
            .unwrap();
        ready_rx.recv().unwrap();
        let own = threads_named("shoal-nice-test").unwrap();
        assert_eq!(own.len(), 1, "the test thread is found by name");
        let before_others: Vec<(u32, i32)> = threads_of(std::process::id())
            .unwrap()
            .into_iter()
            .map(|(tid, _)| tid)
            .filter(|tid| !own.contains(tid))
            .map(|tid| (tid, thread_nice(tid).unwrap()))
            .collect();

        let own_before = thread_nice(own[0]).unwrap();
        lower_priority(own[0], 7).unwrap();

        assert_eq!(thread_nice(own[0]).unwrap(), (own_before + 7).min(19));
        for (tid, nice) in before_others {
            if let Ok(now) = thread_nice(tid) {
                assert_eq!(now, nice, "thread {tid} is not named so and keeps its nice");
            }
        }
        stop_tx.send(()).unwrap();
        named.join().unwrap();
    }

    /// Goal: a name no thread has finds nothing (the node then changes nothing).
    #[test]
    fn no_thread_of_an_unknown_name_is_found() {
        assert!(threads_named("no-such-thread-here").unwrap().is_empty());
    }
}
