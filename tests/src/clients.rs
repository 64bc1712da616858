//! Real Kafka clients driven as subprocesses: kcat (Debian's package) and Python
//! scripts using confluent-kafka, installed into a venv by `tests/run.sh`.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use kafka_protocol::messages::MetadataRequest;
use keel::cli::client::KafkaClient;

/// The Python interpreter of the test venv: `$KEEL_PYTHON`, else `target/test-venv`.
pub fn python() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("KEEL_PYTHON") {
        return Ok(PathBuf::from(p));
    }
    let root = repo_root();
    let p = root.join("target/test-venv/bin/python");
    if !p.exists() {
        bail!(
            "{} missing: run `bash tests/run.sh` (it creates the venv with the Python clients)",
            p.display()
        );
    }
    Ok(p)
}

/// kcat: `$KEEL_KCAT` or `kcat` on PATH.
pub fn kcat() -> anyhow::Result<PathBuf> {
    let p = std::env::var_os("KEEL_KCAT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("kcat"));
    let ok = Command::new(&p)
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !ok {
        bail!("kcat not found: run `bash tests/run.sh` (it installs Debian's kcat)");
    }
    Ok(p)
}

/// The repository root (parent of the tests crate).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// A script in `tests/python/`.
pub fn python_script(name: &str) -> PathBuf {
    repo_root().join("tests/python").join(name)
}

/// Runs a command to completion with a timeout, failing with its output on a non-zero
/// exit. Output is collected by a separate thread so a chatty child never blocks on a
/// full pipe.
pub fn run(cmd: &mut Command, timeout: Duration) -> anyhow::Result<Output> {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn")?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(timeout) {
        Ok(out) => out?,
        Err(_) => {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
            let out = rx.recv().context("child output")??;
            bail!(
                "timed out after {timeout:?}: {cmd:?}\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    };
    if !out.status.success() {
        bail!(
            "{cmd:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// Runs an async block on a fresh current-thread runtime.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// Whether a broker at `addr` answers a Metadata request.
pub fn metadata_ok(addr: &str) -> bool {
    block_on(async {
        let Ok(mut c) = KafkaClient::connect(addr, "keel-tests").await else {
            return false;
        };
        c.call(&MetadataRequest::default().with_topics(Some(vec![])), 12)
            .await
            .is_ok()
    })
}
