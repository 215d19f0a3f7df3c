//! The `weir` command as a user runs it (the real binary) against a real node: what it
//! sends, what it says and how it exits.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;

fn weir(args: &[&str], stdin: &[u8]) -> (i32, String, String) {
    weir_env(args, stdin, &[])
}

/// [`weir`] with these environment variables set (and `WEIR_KEY` removed unless given).
fn weir_env(args: &[&str], stdin: &[u8], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
    cmd.env_remove("WEIR_KEY").env_remove("WEIR_DATA_DIR");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `weir push` exited 0 when every record was refused, stored blank lines as empty
/// records and gave every line of a batch the same timestamp.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_skips_blank_lines_orders_timestamps_and_fails_on_refusals() {
    let n = TestNode::start().await;
    let (code, _, err) = weir(
        &["push", "--addr", &n.grpc, "--service", "cli"],
        b"first\n\nsecond\r\n\nthird\n",
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("pushed 3 records, 0 refused, 2 blank lines skipped"),
        "{err}"
    );
    let body = n.wait_total(&[("sort", "time_asc")], 3).await;
    assert_eq!(bodies(&body), vec!["first", "second", "third"]);
    let ts: Vec<i64> = body["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["timestamp_ns"].as_i64().unwrap())
        .collect();
    assert!(ts[0] < ts[1] && ts[1] < ts[2], "{ts:?}");

    // Every line refused (an unknown level): a non-zero exit with a summary.
    let (code, _, err) = weir(&["push", "--addr", &n.grpc, "--level", "loud"], b"a\nb\n");
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains("line 1 refused") && err.contains("line 2 refused"),
        "{err}"
    );
    assert!(err.contains("2 of 2 lines were refused"), "{err}");
    assert!(!err.contains("stack backtrace"), "{err}");
    n.stop().await;
}

/// One 17 MiB line aborted the whole push with "send smaller batches".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_too_long_is_refused_alone_and_the_rest_is_sent() {
    let n = TestNode::start().await;
    let mut input = b"before\n".to_vec();
    input.extend(std::iter::repeat_n(b'x', 17 << 20));
    input.extend(b"\nafter\n");
    let (code, _, err) = weir(&["push", "--addr", &n.grpc], &input);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("line 2 refused"), "{err}");
    assert!(err.contains("--batch-bytes"), "{err}");
    assert!(err.contains("pushed 2 records, 1 refused"), "{err}");
    let body = n.wait_total(&[("sort", "time_asc")], 2).await;
    assert_eq!(bodies(&body), vec!["before", "after"]);

    // A batch the node finds too large (its limits.batch_bytes_max is below
    // --batch-bytes) is split until it fits.
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.limits.batch_bytes_max = 64 << 10;
    let small = TestNode::start_with(dir, cfg).await;
    let lines: String = (0..200)
        .map(|i| format!("line {i} {}\n", "y".repeat(1000)))
        .collect();
    let (code, _, err) = weir(&["push", "--addr", &small.grpc], lines.as_bytes());
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("pushed 200 records, 0 refused"), "{err}");
    small.wait_total(&[], 200).await;
    small.stop().await;
    n.stop().await;
}

/// With RUST_BACKTRACE set in the user's shell, a user error printed a Rust backtrace.
#[test]
fn user_errors_print_a_message_and_a_hint_never_a_backtrace() {
    let (code, _, err) = weir(&["query", "--addr", "http://127.0.0.1:9", "x"], b"");
    assert_eq!(code, 1, "{err}");
    assert!(
        err.starts_with("error: cannot reach http://127.0.0.1:9"),
        "{err}"
    );
    assert!(err.contains("hint:"), "{err}");
    assert!(
        !err.contains("backtrace") && !err.contains("Stack"),
        "{err}"
    );
    let (code, _, err) = weir(&["push", "--addr", "http://127.0.0.1:9"], b"x\n");
    assert_eq!(code, 1);
    assert!(err.contains("hint:") && !err.contains("backtrace"), "{err}");
}

/// `weir config defaults` prints every key; `weir config check` names a misspelt key's
/// nearest neighbour and a deprecated key's replacement.
#[test]
fn config_defaults_print_and_check_suggests_keys() {
    let (code, out, err) = weir(&["config", "defaults"], b"");
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("[limits]\n") && out.contains("timestamp_future_secs_max = 600"),
        "{out}"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("weir.toml");
    std::fs::write(&file, "[limits]\nmax_timestamp_future_ns = 5\n").unwrap();
    let (code, _, err) = weir(&["config", "check", file.to_str().unwrap()], b"");
    assert_eq!(code, 1);
    assert!(
        err.contains("did you mean `timestamp_future_secs_max`?"),
        "{err}"
    );
    std::fs::write(&file, "[limits]\nmax_batch_bytes = 1048576\n").unwrap();
    let (code, out, err) = weir(&["config", "check", file.to_str().unwrap()], b"");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(": ok"), "{out}");
    assert!(err.contains("rename it limits.batch_bytes_max"), "{err}");
}

/// `weir query --since` widens the default hour, and the output says the range.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_since_widens_the_range_and_prints_it() {
    let n = TestNode::start().await;
    let mut old = record("from yesterday");
    old.timestamp_ns = now_ns() - 24 * 3600 * 1_000_000_000;
    n.append_records(vec![old]).await;
    n.wait_total(&[("start", "0")], 1).await;
    let (code, out, err) = weir(&["query", "--addr", &n.http, ""], b"");
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("from yesterday"), "{out}");
    assert!(err.contains("no start given"), "{err}");
    let (code, out, err) = weir(&["query", "--addr", &n.http, "--since", "2d", ""], b"");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("from yesterday"), "{out}");
    assert!(err.contains("1 of 1 hits from "), "{err}");
    n.stop().await;
}

/// `weir dev-cluster` left a dead node as a zombie and said nothing; it now reports the
/// exit and restarts the node on `restart N`.
#[test]
fn dev_cluster_reports_a_dead_node_and_restarts_it() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port().clamp(20000, 60000)
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args([
            "dev-cluster",
            "--nodes",
            "1",
            "--base-port",
            &port.to_string(),
            "--dir",
        ])
        .arg(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let wait_for = |needle: &str| -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(e) => panic!("no line with {needle:?}: {e}"),
            }
        }
    };
    wait_for("Ctrl-C stops the cluster");
    let children =
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", child.id())).unwrap();
    let node: i32 = children.split_whitespace().next().unwrap().parse().unwrap();
    // SAFETY: kill(2) on the node process this test's dev-cluster started.
    unsafe { libc::kill(node, libc::SIGKILL) };
    let line = wait_for("node 1 exited");
    assert!(line.contains("restart 1"), "{line}");
    let stat = std::fs::read_to_string(format!("/proc/{node}/stat")).unwrap_or_default();
    assert!(
        stat.is_empty(),
        "the dead node is reaped, not a zombie: {stat}"
    );
    writeln!(stdin, "restart 1").unwrap();
    wait_for("node 1 restarted");
    // Keys are on, and the node registered the cluster's admin key (WEIR_ADMIN_KEY).
    let key = std::fs::read_to_string(dir.path().join("admin.key")).unwrap();
    // Written by the node once its first admin key is committed (it has just restarted).
    let node_key_file = dir.path().join("node1").join("admin.key");
    // It first catches up the key table's raft group: on a machine loaded by the rest of
    // the suite that once took over 30 s.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    while !node_key_file.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let node_key = std::fs::read_to_string(&node_key_file).unwrap_or_else(|e| {
        panic!(
            "the restarted node wrote no {} within 90 s: {e}",
            node_key_file.display()
        )
    });
    assert_eq!(key.trim(), node_key.trim());
    assert!(key.starts_with("weir_"), "{key}");
    // SAFETY: kill(2) on the dev-cluster process this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}

/// `weir keys` and `weir tenants` against a node with keys on: the admin key is found in
/// the data directory (`WEIR_DATA_DIR`), a created key is printed once and works, a
/// revoked one is refused, and a command without a key says what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_created_listed_used_and_revoked_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.auth.enabled = true;
    let n = TestNode::start_with(dir, cfg).await;
    let data = n.dir.path().to_str().unwrap().to_owned();
    let admin = [("WEIR_DATA_DIR", data.as_str())];
    let (code, out, err) = weir_env(
        &[
            "keys",
            "create",
            "--addr",
            &n.http,
            "--tenant",
            "acme",
            "--scope",
            "write,read",
            "--note",
            "ci",
        ],
        b"",
        &admin,
    );
    assert_eq!(code, 0, "{err}");
    let key = out.trim().to_owned();
    assert!(key.starts_with("weir_"), "{out}");
    assert!(
        err.contains("shown only now") && err.contains("acme"),
        "{err}"
    );
    let id = weir_server::auth::parse_key(&key).unwrap().id.to_owned();

    let (code, out, err) = weir_env(&["keys", "list", "--addr", &n.http], b"", &admin);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&id) && out.contains("write,read") && out.contains("acme"),
        "{out}"
    );
    assert!(
        !out.contains(weir_server::auth::parse_key(&key).unwrap().secret),
        "{out}"
    );

    let (code, out, err) = weir_env(
        &["push", "--addr", &n.grpc, "--key", &key, "--service", "cli"],
        b"hello from acme\n",
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    let mut found = String::new();
    for _ in 0..40 {
        let (code, out, err) = weir_env(
            &["query", "--addr", &n.http, "hello"],
            b"",
            &[("WEIR_KEY", key.as_str())],
        );
        assert_eq!(code, 0, "{err}");
        found = out;
        if found.contains("hello from acme") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert!(found.contains("hello from acme"), "{found}");

    let (code, out, err) = weir_env(&["tenants", "list", "--addr", &n.http], b"", &admin);
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().any(|l| l.starts_with("acme")), "{out}");

    let (code, _, err) = weir_env(&["query", "--addr", &n.http, ""], b"", &[]);
    assert_ne!(code, 0);
    assert!(err.contains("401") && err.contains("access key"), "{err}");

    let (code, out, err) = weir_env(&["keys", "revoke", "--addr", &n.http, &id], b"", &admin);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("revoked"), "{out}");
    let (code, _, err) = weir_env(&["query", "--addr", &n.http, "--key", &key, ""], b"", &[]);
    assert_ne!(code, 0);
    assert!(err.contains("revoked"), "{err}");
    n.stop().await;
}
