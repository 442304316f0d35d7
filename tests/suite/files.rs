//! Commands and files in a sandbox, byte for byte.

use crate::common::desktop;
use crate::common::wait::{check, eventually};
use pretty_assertions::assert_eq;
use rand::RngCore;
use selfagent::sandbox::ExecOptions;
use std::time::Duration;

#[tokio::test]
async fn exec_reports_exit_code_stdout_stderr_and_timeouts() {
    let d = desktop().await;
    let out = d
        .sandbox
        .sh(
            "printf 'out\\n'; printf 'err\\n' >&2; exit 3",
            &ExecOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        (out.exit_code, out.stdout_text(), out.stderr_text()),
        (3, "out\n".into(), "err\n".into())
    );
    assert!(!out.timed_out);

    let out = d
        .sandbox
        .exec(
            &["cat"],
            &ExecOptions {
                stdin: Some(b"piped \xff bytes".to_vec()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(out.stdout, b"piped \xff bytes");

    let out = d
        .sandbox
        .exec(
            &["sleep", "10"],
            &ExecOptions {
                timeout: Some(Duration::from_millis(500)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(out.timed_out && !out.success(), "{out:?}");
    assert!(out.duration_ms < 5000, "{out:?}");

    // The container's own secrets do not leak into commands.
    let env = d.sh("env").await;
    for secret in d.sandbox.secrets().values() {
        assert!(
            !env.contains(secret),
            "a secret is visible to exec'd commands"
        );
    }
}

#[tokio::test]
async fn files_round_trip_exactly() {
    let d = desktop().await;
    let mut data = vec![0u8; 1 << 20];
    rand::rng().fill_bytes(&mut data);
    d.sandbox
        .write_file("~/deep/new dir/ünï cödé.bin", &data)
        .await
        .unwrap();
    let back = d
        .sandbox
        .read_file("/home/user/deep/new dir/ünï cödé.bin")
        .await
        .unwrap();
    assert!(back == data, "read back {} bytes that differ", back.len());
    // Same bytes as the container sees them, owned by the desktop's user.
    let sum = d
        .sh("sha256sum '/home/user/deep/new dir/ünï cödé.bin' | cut -d' ' -f1")
        .await;
    let expected: String = {
        use sha2::Digest;
        sha2::Sha256::digest(&data)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    assert_eq!(sum.trim(), expected);
    assert_eq!(d.sh("stat -c %U ~/deep/new\\ dir").await.trim(), "user");

    // Empty files, overwrites and missing files.
    d.sandbox.write_file("/tmp/empty", b"").await.unwrap();
    assert_eq!(d.sandbox.read_file("/tmp/empty").await.unwrap(), b"");
    d.sandbox
        .write_file("/tmp/empty", b"now full")
        .await
        .unwrap();
    assert_eq!(
        d.sandbox.read_file("/tmp/empty").await.unwrap(),
        b"now full"
    );
    let err = d
        .sandbox
        .read_file("/tmp/nope")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no such file") && err.contains("/tmp/nope"),
        "{err}"
    );
    let err = d.sandbox.read_file("/tmp").await.unwrap_err().to_string();
    assert!(err.contains("is a directory"), "{err}");
}

#[tokio::test]
async fn directories_copy_both_ways() {
    let d = desktop().await;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("tree");
    std::fs::create_dir_all(src.join("a/b")).unwrap();
    std::fs::write(src.join("top.txt"), "top").unwrap();
    std::fs::write(src.join("a/b/leaf.bin"), [0u8, 255, 10, 13]).unwrap();
    let sent = d.sandbox.upload(&src, "/home/user/").await.unwrap();
    assert_eq!(sent, 7);
    assert_eq!(d.sh("cat ~/tree/top.txt").await, "top");
    d.sh("echo made-inside > ~/tree/a/inside.txt").await;

    let back = dir.path().join("back");
    d.sandbox.download("~/tree", &back, u64::MAX).await.unwrap();
    assert_eq!(
        std::fs::read(back.join("a/b/leaf.bin")).unwrap(),
        vec![0, 255, 10, 13]
    );
    assert_eq!(
        std::fs::read_to_string(back.join("a/inside.txt")).unwrap(),
        "made-inside\n"
    );
}

#[tokio::test]
async fn background_processes_can_be_listed_and_killed() {
    let d = desktop().await;
    let p = d
        .sandbox
        .spawn("echo started; exec sleep 300")
        .await
        .unwrap();
    let listed = d.sandbox.processes().await.unwrap();
    assert!(
        listed
            .iter()
            .any(|q| q.pid == p.pid && q.command.contains("sleep 300")),
        "{listed:?}"
    );
    let log = p.log.clone().unwrap();
    assert_eq!(
        String::from_utf8(d.wait_file(&log, Duration::from_secs(5)).await).unwrap(),
        "started\n"
    );
    d.sandbox.kill_process(p.pid, "TERM").await.unwrap();
    eventually(
        &format!("process {} to end on TERM", p.pid),
        Duration::from_secs(5),
        || async {
            let alive = d.sandbox.processes().await.unwrap();
            check(!alive.iter().any(|q| q.pid == p.pid), || {
                "it still runs".to_owned()
            })
        },
    )
    .await;
}
