//! Leaving nothing behind: on SIGINT, SIGTERM or SIGHUP the harness removes its
//! iptables rules, wakes and kills the nodes it started, and exits; at start it
//! removes rules an earlier, killed run left behind.
//!
//! Nodes are also started with PR_SET_PDEATHSIG (see `node.rs`), so even a SIGKILLed
//! harness takes its nodes with it; only its iptables rules can outlive it, and the
//! next run (or `tests/faults/run.sh`) removes them by their comment.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Mutex;

use super::net;

/// Node processes to kill on interruption: node id -> pid.
static PIDS: Mutex<BTreeMap<u64, u32>> = Mutex::new(BTreeMap::new());
/// The iptables comment of this run's rules.
static COMMENT: Mutex<Option<String>> = Mutex::new(None);

/// Exit status after an interruption (128 + SIGINT, as shells report it).
pub const INTERRUPTED_EXIT_CODE: i32 = 130;

/// Records node `id`'s current process (or forgets it with `None`).
pub fn track(id: u64, pid: Option<u32>) {
    let mut pids = PIDS.lock().unwrap_or_else(|p| p.into_inner());
    match pid {
        Some(pid) => pids.insert(id, pid),
        None => pids.remove(&id),
    };
}

/// Removes every iptables rule carrying `comment`, wakes and kills every tracked
/// process. Safe to call more than once.
pub fn clean_up() {
    let comment = COMMENT.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if let Some(c) = comment {
        net::remove_rules_with_comment(&c);
    }
    let pids: Vec<u32> = PIDS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .copied()
        .collect();
    for pid in pids {
        // A stopped process must be continued to die promptly from SIGTERM; SIGKILL
        // works on it either way.
        let _ = Command::new("kill")
            .args(["-CONT", &pid.to_string()])
            .status();
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
}

/// Removes leftovers of an earlier run that used `comment`, remembers it, and installs
/// the signal handler; returns how many leftover rules were removed.
///
/// # Errors
/// The signal-handling thread cannot be started.
pub fn install(comment: &str) -> anyhow::Result<usize> {
    let removed = net::remove_rules_with_comment(comment);
    *COMMENT.lock().unwrap_or_else(|p| p.into_inner()) = Some(comment.to_string());
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(|| {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                use tokio::signal::unix::{signal, SignalKind};
                let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
                    signal(SignalKind::interrupt()),
                    signal(SignalKind::terminate()),
                    signal(SignalKind::hangup()),
                ) else {
                    return;
                };
                let name = tokio::select! {
                    _ = int.recv() => "SIGINT",
                    _ = term.recv() => "SIGTERM",
                    _ = hup.recv() => "SIGHUP",
                };
                eprintln!("keel-faults: {name}: removing iptables rules and killing nodes");
                clean_up();
                std::process::exit(INTERRUPTED_EXIT_CODE);
            });
        })?;
    Ok(removed)
}
