//! The `keel` command line: clear messages for bad flags, a data directory in use by
//! another process, a corrupt data directory, and admin errors from the broker.

use std::process::{Command, Output};
use std::time::Duration;

use keel_tests::node::{free_port, keel_binary};
use keel_tests::KeelNode;

fn keel(args: &[&str]) -> Output {
    let mut child = Command::new(keel_binary())
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "keel {args:?} did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn fails_saying(args: &[&str], needle: &str) {
    let out = keel(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "keel {args:?} should fail");
    assert!(
        stderr.contains(needle),
        "keel {args:?}: stderr does not mention `{needle}`:\n{stderr}"
    );
}

#[test]
fn bad_server_flags_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    fails_saying(
        &["server", "--data-dir", d, "--listen", "nowhere"],
        "--listen",
    );
    fails_saying(
        &["server", "--data-dir", d, "--set", "log.segmnt.bytes=5"],
        "log.segmnt.bytes",
    );
    fails_saying(
        &["server", "--data-dir", d, "--set", "num.partitions=-3"],
        "num.partitions",
    );
    fails_saying(&["server", "--data-dir", d, "--set", "oops"], "key=value");
    fails_saying(
        &[
            "server",
            "--data-dir",
            d,
            "--config",
            "/nonexistent/keel.toml",
        ],
        "/nonexistent/keel.toml",
    );
    fails_saying(&["server", "--bogus-flag"], "--bogus-flag");
}

#[test]
fn a_data_directory_in_use_is_refused() {
    let node = KeelNode::start(&[]).unwrap();
    let other = format!("127.0.0.1:{}", free_port());
    fails_saying(
        &[
            "server",
            "--data-dir",
            node.data_dir.to_str().unwrap(),
            "--listen",
            &other,
        ],
        "in use",
    );
}

#[test]
fn a_corrupt_data_directory_is_reported_not_served() {
    let mut node = KeelNode::start(&[]).unwrap();
    let addr = node.addr.clone();
    let out = keel(&[
        "topics",
        "--bootstrap-server",
        &addr,
        "create",
        "--topic",
        "c",
        "--partitions",
        "1",
    ]);
    assert!(out.status.success());
    node.stop().unwrap();
    let data = node.data_dir.clone();

    std::fs::write(data.join("meta.properties"), "not properties at all").unwrap();
    fails_saying(
        &[
            "server",
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            &addr,
        ],
        "corrupt",
    );
}

#[test]
fn admin_errors_come_back_with_their_kafka_names() {
    let node = KeelNode::start(&[]).unwrap();
    let b = node.addr.as_str();
    let ok = keel(&[
        "topics",
        "--bootstrap-server",
        b,
        "create",
        "--topic",
        "twice",
    ]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    fails_saying(
        &[
            "topics",
            "--bootstrap-server",
            b,
            "create",
            "--topic",
            "twice",
        ],
        "TopicAlreadyExists",
    );
    fails_saying(
        &[
            "topics",
            "--bootstrap-server",
            b,
            "create",
            "--topic",
            "bad name",
        ],
        "InvalidTopicException",
    );
    fails_saying(
        &[
            "topics",
            "--bootstrap-server",
            b,
            "create",
            "--topic",
            "rf",
            "--replication-factor",
            "3",
        ],
        "InvalidReplicationFactor",
    );
    fails_saying(
        &[
            "topics",
            "--bootstrap-server",
            b,
            "create",
            "--topic",
            "cfg",
            "--config",
            "retention.ms=soon",
        ],
        "InvalidConfig",
    );
    fails_saying(
        &[
            "topics",
            "--bootstrap-server",
            b,
            "alter",
            "--topic",
            "twice",
            "--partitions",
            "1",
        ],
        "InvalidPartitions",
    );
    fails_saying(
        &[
            "topics",
            "--bootstrap-server",
            b,
            "delete",
            "--topic",
            "nope",
        ],
        "UnknownTopicOrPartition",
    );
    fails_saying(
        &["topics", "--bootstrap-server", "127.0.0.1:1", "list"],
        "127.0.0.1:1",
    );
}
