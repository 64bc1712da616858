//! A `keel server` process under test: started on a loopback address with its own
//! data directory, killed with SIGKILL or stopped with SIGTERM, restarted on the same
//! directory. Its log goes to `<dir>/keel.log` and is printed when a test fails.

use std::fs::File;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// How long a node may take to start accepting clients.
pub const NODE_START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a node may take to exit after SIGTERM.
pub const NODE_STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The `keel` binary: `$KEEL_BIN`, else next to this test binary's target directory.
pub fn keel_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("KEEL_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> or target/<profile>/<bin> → target/<profile>/keel
    let mut dir = exe.parent().expect("target layout");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().expect("target layout");
    }
    dir.join("keel")
}

/// A free TCP port on 127.0.0.1 (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A running (or stopped) keel node.
pub struct KeelNode {
    /// Address clients use.
    pub addr: String,
    /// Its data directory.
    pub data_dir: PathBuf,
    log_path: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
    _tmp: Option<tempfile::TempDir>,
}

impl KeelNode {
    /// Starts a single combined node in a fresh temporary directory.
    pub fn start(extra_args: &[&str]) -> anyhow::Result<Self> {
        let tmp = tempfile::Builder::new().prefix("keel-test-").tempdir()?;
        let mut node = Self::start_in(tmp.path(), extra_args)?;
        node._tmp = Some(tmp);
        Ok(node)
    }

    /// Starts a single combined node with its data under `dir`.
    pub fn start_in(dir: &Path, extra_args: &[&str]) -> anyhow::Result<Self> {
        let addr = format!("127.0.0.1:{}", free_port());
        let mut node = Self::spawn(dir, &addr, extra_args)?;
        node.wait_ready()?;
        Ok(node)
    }

    /// Starts `keel server --data-dir <dir>/data --listen <addr> <extra_args>` without
    /// waiting for it to serve (a cluster node needs its peers first).
    pub fn spawn(dir: &Path, addr: &str, extra_args: &[&str]) -> anyhow::Result<Self> {
        let data_dir = dir.join("data");
        let mut args: Vec<String> = vec![
            "server".into(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--listen".into(),
            addr.to_string(),
        ];
        args.extend(extra_args.iter().map(|s| s.to_string()));
        let mut node = KeelNode {
            addr: addr.to_string(),
            data_dir,
            log_path: dir.join("keel.log"),
            args,
            child: None,
            _tmp: None,
        };
        node.spawn_process()?;
        Ok(node)
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        self.spawn_process()?;
        self.wait_ready()
    }

    /// Whether the process is running (not exited; it may be stopped by SIGSTOP).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGSTOP: the process freezes, sockets stay open.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after `pause`.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill").arg(sig).arg(pid.to_string()).status();
        }
    }

    /// Starts the process again on the same address and data directory without
    /// waiting for it to serve.
    pub fn respawn(&mut self) -> anyhow::Result<()> {
        self.kill9();
        self.spawn_process()
    }

    fn spawn_process(&mut self) -> anyhow::Result<()> {
        let bin = keel_binary();
        if !bin.exists() {
            bail!(
                "{} not found: build it first with `cargo build --release --bin keel`",
                bin.display()
            );
        }
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        let mut command = Command::new(&bin);
        // The node dies with the thread that started it, even if that thread's process
        // is SIGKILLed and cannot clean up (a fault run interrupted hard, a test binary
        // killed by a timeout). Nodes are started by long-lived threads (a test's own
        // thread, the fault harness's main thread).
        // SAFETY: the closure runs in the child between fork and exec and only makes
        // one async-signal-safe system call.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .args(&self.args)
            .env(
                "KEEL_LOG",
                std::env::var("KEEL_LOG").unwrap_or_else(|_| "info,openraft=warn".into()),
            )
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until the node answers a Metadata request on its client address.
    pub fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + NODE_START_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "keel exited during start-up with {status}; log:\n{}",
                        self.log_tail()
                    );
                }
            }
            if crate::clients::metadata_ok(&self.addr) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "keel did not start within {NODE_START_TIMEOUT:?}; log:\n{}",
            self.log_tail()
        )
    }

    /// The process id, if running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILL: no chance to flush or checkpoint.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit code.
    pub fn stop(&mut self) -> anyhow::Result<Option<i32>> {
        let Some(mut child) = self.child.take() else {
            return Ok(None);
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + NODE_STOP_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status.code());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!(
                    "keel did not stop within {NODE_STOP_TIMEOUT:?} after SIGTERM; log:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the process again on the same address and data directory.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            self.stop()?;
        }
        self.launch()
    }

    /// The last lines of the node's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }
}

impl Drop for KeelNode {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- keel log ({}) ----\n{}",
                self.log_path.display(),
                self.log_tail()
            );
        }
        self.kill9();
    }
}
