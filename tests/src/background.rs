//! Client scripts running in the background while a test injects faults: their
//! stdout and stderr go to files the test reads as they grow; killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::clients::{python, python_script};
use crate::records::record_lines;

/// How long a background producer may go without printing the records waited for.
pub const WAIT_FOR_RECORDS: Duration = Duration::from_secs(120);

/// A Python client script (`tests/python/<script>`) running in the background.
pub struct Background {
    child: Child,
    /// Its stdout.
    pub out: PathBuf,
    /// Its stderr.
    pub err: PathBuf,
}

impl Background {
    /// Starts `tests/python/<script> args…` with output in `dir/<name>.{out,err}`.
    ///
    /// # Panics
    /// The venv's interpreter is missing or the process does not start (a test setup
    /// failure).
    pub fn start(dir: &Path, name: &str, script: &str, args: &[&str]) -> Self {
        let out = dir.join(format!("{name}.out"));
        let err = dir.join(format!("{name}.err"));
        let child = Command::new(python().expect("python"))
            .arg(python_script(script))
            .args(args)
            .stdout(std::fs::File::create(&out).expect("stdout file"))
            .stderr(std::fs::File::create(&err).expect("stderr file"))
            .spawn()
            .expect("spawn client script");
        Background { child, out, err }
    }

    /// What it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// Waits until the script has printed at least `n` record lines.
    ///
    /// # Panics
    /// The script exits first, or `WAIT_FOR_RECORDS` passes.
    pub fn wait_records(&mut self, n: usize) {
        let deadline = Instant::now() + WAIT_FOR_RECORDS;
        loop {
            let have = record_lines(&self.out).len();
            if have >= n {
                return;
            }
            assert!(
                self.child.try_wait().ok().flatten().is_none(),
                "{} exited early:\n{}",
                self.out.display(),
                self.stderr()
            );
            assert!(
                Instant::now() < deadline,
                "only {have} of {n} records after {WAIT_FOR_RECORDS:?}:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills it.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop();
    }
}
