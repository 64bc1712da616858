//! Real Kafka clients driven as subprocesses: kcat (Debian's package), Python
//! scripts using confluent-kafka and kafka-python (installed into a venv by
//! `tests/run.sh`) and Node.js scripts using kafkajs (`npm ci` in `tests/node/`).

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

/// Node.js: `$KEEL_NODE` or `node` on PATH, with the packages of `tests/node/`
/// installed (`tests/run.sh` runs `npm ci` there).
pub fn node() -> anyhow::Result<PathBuf> {
    let p = std::env::var_os("KEEL_NODE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("node"));
    let ok = Command::new(&p)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        bail!("node not found: install Node.js, then run `bash tests/run.sh`");
    }
    let modules = repo_root().join("tests/node/node_modules/kafkajs");
    if !modules.is_dir() {
        bail!(
            "{} missing: run `bash tests/run.sh` (it runs `npm ci` in tests/node)",
            modules.display()
        );
    }
    Ok(p)
}

/// A script in `tests/node/`.
pub fn node_script(name: &str) -> PathBuf {
    repo_root().join("tests/node").join(name)
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

/// A client script that takes `MODE BOOTSTRAP TOPIC [COUNT]` and prints a JSON summary
/// (see the scripts' own docs for the modes).
#[derive(Clone, Copy, Debug)]
pub enum ClientScript {
    /// `tests/python/kafka_python_client.py` (kafka-python).
    KafkaPython,
    /// `tests/node/kafkajs_client.js` (kafkajs).
    Kafkajs,
    /// `tests/python/confluent_features.py` (confluent-kafka).
    ConfluentFeatures,
}

impl ClientScript {
    /// Runs the script in `mode` against the broker at `addr` and returns its summary.
    ///
    /// # Errors
    /// A missing interpreter, a timeout, a non-zero exit (the script found a mismatch:
    /// its stderr is in the message) or output that is not JSON.
    pub fn run(
        self,
        mode: &str,
        addr: &str,
        topic: &str,
        count: usize,
        timeout: Duration,
    ) -> anyhow::Result<serde_json::Value> {
        let mut cmd = match self {
            ClientScript::KafkaPython => {
                let mut c = Command::new(python()?);
                c.arg(python_script("kafka_python_client.py"));
                c
            }
            ClientScript::ConfluentFeatures => {
                let mut c = Command::new(python()?);
                c.arg(python_script("confluent_features.py"));
                c
            }
            ClientScript::Kafkajs => {
                let mut c = Command::new(node()?);
                c.arg(node_script("kafkajs_client.js"));
                c
            }
        };
        cmd.args([mode, addr, topic, &count.to_string()]);
        let out = run(&mut cmd, timeout)?;
        serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "{self:?} {mode}: not JSON: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }
}
