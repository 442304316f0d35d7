//! The agent is hostile: what it does inside its desktop (links, special and sparse files,
//! reading every process it can, killing what it can) must not reach the host, exhaust it,
//! or leak a credential. Each test acts as the agent does, from inside the desktop as its
//! user (uid 1000), and checks the host side with the real binary.

use crate::common::{Guard, SnapshotsOf, bin, cli, desktop, http, stderr, stdout};
use pretty_assertions::assert_eq;
use serde_json::Value;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

/// Runs `selfagent ARGS` while sampling its peak resident memory (VmHWM); returns the
/// output and the peak in bytes.
async fn with_peak_rss(args: &[&str], home: &Path) -> (std::process::Output, u64) {
    let child = tokio::process::Command::new(bin())
        .args(args)
        .env("HOME", home)
        .env_remove("OPENAI_BASE_URL")
        .env_remove("SELFAGENT_DB")
        .env_remove("SELFAGENT_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let sampler = tokio::spawn(async move {
        let mut peak = 0u64;
        while let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            if let Some(kb) = status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            {
                peak = peak.max(kb * 1024);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        peak
    });
    let out = child.wait_with_output().await.unwrap();
    (out, sampler.await.unwrap())
}

/// `sandbox up --json` with a guard that removes the desktop.
fn up() -> (Value, Guard) {
    let out = cli(&["sandbox", "up", "--json", "--ttl", "900"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    let guard = Guard(v["id"].as_str().unwrap().to_owned());
    (v, guard)
}

/// A shell command in the desktop as its user, as the agent would run it.
fn agent(id: &str, script: &str) -> std::process::Output {
    cli(&["sandbox", "exec", id, "--", "sh", "-c", script])
}

#[test]
fn copying_out_of_a_desktop_never_reaches_outside_the_destination() {
    let (v, _guard) = up();
    let id = v["id"].as_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("keep"), "host data").unwrap();
    let outside_s = outside.to_str().unwrap();

    // The agent plants links to host paths, a pipe, and a link chain that leaves the copy.
    let made = agent(
        id,
        &format!(
            "mkdir -p ~/out/sub ~/out/x && echo fine > ~/out/sub/ok.txt \
             && ln -s /etc/shadow ~/out/shadow && ln -s {outside_s} ~/out/sub/link \
             && ln -s .. ~/out/x/b && ln -s x/b/../../outside ~/out/chain \
             && ln -s sub/ok.txt ~/out/inside && mkfifo ~/out/fifo"
        ),
    );
    assert!(made.status.success(), "{}", stderr(&made));
    // Copied into the directory, as `out` there (as `cp -r` does), twice.
    let copy = dir.path().join("out");
    let into = dir.path().to_str().unwrap();
    let out = cli(&["sandbox", "cp", &format!("{id}:/home/user/out"), into]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    for refused in ["shadow", "sub/link", "chain", "fifo"] {
        assert!(err.contains(refused), "{refused} not reported: {err}");
        assert!(
            std::fs::symlink_metadata(copy.join(refused)).is_err(),
            "{refused} was made on the host"
        );
    }
    assert_eq!(
        std::fs::read_to_string(copy.join("inside")).unwrap(),
        "fine\n"
    );

    // A copy made by an older tool left a link to a host directory; the agent turns that
    // name into a directory with a file in it, and it is copied again.
    std::os::unix::fs::symlink(&outside, copy.join("sub/link")).unwrap();
    let made = agent(
        id,
        "rm ~/out/sub/link && mkdir ~/out/sub/link && echo agent > ~/out/sub/link/keep",
    );
    assert!(made.status.success(), "{}", stderr(&made));
    cli(&["sandbox", "cp", &format!("{id}:/home/user/out"), into]);
    assert_eq!(
        std::fs::read_to_string(outside.join("keep")).unwrap(),
        "host data",
        "the copy wrote through a link on the host"
    );
    assert_eq!(
        std::fs::read_to_string(copy.join("sub/link/keep")).unwrap(),
        "agent\n"
    );

    // A single link copied alone: refused, nothing made.
    let single = dir.path().join("single");
    let out = cli(&[
        "sandbox",
        "cp",
        &format!("{id}:/home/user/out/shadow"),
        single.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(std::fs::symlink_metadata(&single).is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn sparse_files_neither_fill_memory_nor_disk() {
    let (v, _guard) = up();
    let id = v["id"].as_str().unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let made = agent(&id, "truncate -s 1G ~/big && echo end >> ~/big");
    assert!(made.status.success(), "{}", stderr(&made));

    // Over the default limit (1 GiB): refused, nothing left behind but what fit.
    let copy = dir.path().join("big");
    let (out, _) = with_peak_rss(
        &[
            "sandbox",
            "cp",
            &format!("{id}:/home/user/big"),
            copy.to_str().unwrap(),
        ],
        dir.path(),
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("limit"), "{}", stderr(&out));

    // With room: streamed (small memory), and sparse on disk.
    let (out, peak) = with_peak_rss(
        &[
            "sandbox",
            "cp",
            "--max-size",
            "2g",
            &format!("{id}:/home/user/big"),
            copy.to_str().unwrap(),
        ],
        dir.path(),
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&copy).unwrap();
    assert_eq!(meta.len(), (1 << 30) + 4);
    assert!(
        meta.blocks() * 512 < 16 << 20,
        "{} bytes on disk",
        meta.blocks() * 512
    );
    assert!(
        peak < 200 << 20,
        "peak RSS {peak} bytes copying a 1 GiB file"
    );
}

/// A task whose file checks meet a 2 GB sparse file: `exists` is answered from its size,
/// content checks refuse to read it (an error, not a verdict), memory stays small, and the
/// snapshot is skipped with the reason recorded.
#[tokio::test(flavor = "multi_thread")]
async fn grading_a_huge_sparse_file_reads_nothing_and_skips_the_snapshot() {
    use crate::common::model_server::{ModelServer, answer};
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let task = home.join("sparse.toml");
    std::fs::write(
        &task,
        r#"
id = "sparse-file"
instruction = "make a big file"
[[setup]]
exec = "truncate -s 2G ~/big"
[check]
all = [
  { file = "~/big", exists = true },
  { file = "~/big", contains = "needle" },
]
"#,
    )
    .unwrap();
    let db = home.join("rec.db");
    let _snapshots = SnapshotsOf(db.clone());
    let server = ModelServer::start(vec![answer("done")], (1280, 800)).await;
    let url = server.base_url();
    let (out, peak) = with_peak_rss(
        &[
            "run",
            "--headless",
            "--task",
            task.to_str().unwrap(),
            "--base-url",
            &url,
            "--db",
            db.to_str().unwrap(),
        ],
        home,
    )
    .await;
    // The content check could not be evaluated: a harness error, not the agent's failure.
    assert_eq!(out.status.code(), Some(4), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("checks read at most"),
        "{}",
        stdout(&out)
    );
    assert!(
        peak < 200 << 20,
        "peak RSS {peak} bytes grading a 2 GB file"
    );
    let rec = selfagent::record::Db::open_read(&db).unwrap();
    let s = &rec.task_sessions().unwrap()[0];
    let state = rec.final_state(&s.id).unwrap().unwrap();
    assert_eq!(state.snapshot, None);
    assert!(
        state
            .snapshot_skipped
            .as_deref()
            .is_some_and(|r| r.contains("snapshot limit")),
        "{:?}",
        state.snapshot_skipped
    );
    let grade = rec.latest_grade(&s.id).unwrap().unwrap();
    let exists = &grade.details["result"]["children"][0];
    assert_eq!(exists["verdict"], "passed", "{exists}");
}

#[tokio::test]
async fn the_agent_cannot_read_the_desktops_credentials() {
    let d = desktop().await;
    let secrets = d.sandbox.secrets().clone();
    // Everything uid 1000 can read where credentials could hide: every process's
    // environment and command line, the runtime and temporary directories, its home.
    let seen = d
        .sandbox
        .sh(
            "for p in /proc/[0-9]*; do cat $p/environ $p/cmdline 2>/dev/null; echo; done; \
             find /run /tmp /home /etc /opt /var -xdev -type f -readable -size -1024k \
               -exec cat {} + 2>/dev/null",
            &Default::default(),
        )
        .await
        .unwrap();
    let seen = String::from_utf8_lossy(&seen.stdout);
    assert!(seen.len() > 10_000, "read too little to prove anything");
    for secret in secrets.values() {
        assert!(!seen.contains(secret), "the agent can read a credential");
    }
    // The X server, the view and their files belong to another user the agent cannot
    // signal or read.
    for (what, script) in [
        ("kill the X server", "kill -STOP $(pgrep -x Xvnc)"),
        ("kill the view", "kill -KILL $(pgrep -u selfagent python3)"),
        ("read the VNC password", "cat /run/selfagent/vncpasswd"),
        ("read root's copy", "cat /run/selfagent-root/secrets"),
    ] {
        let out = d.sandbox.sh(script, &Default::default()).await.unwrap();
        assert!(!out.success(), "the agent could {what}");
    }

    // A snapshot of the desktop carries none either, in any part of its config.
    let image = d
        .sandbox
        .commit_snapshot("hostile-test", None)
        .await
        .unwrap();
    let inspect = std::process::Command::new("docker")
        .args(["image", "inspect", &image])
        .output()
        .unwrap();
    let _ = std::process::Command::new("docker")
        .args(["rmi", "-f", &image])
        .stdout(Stdio::null())
        .status();
    let inspect = String::from_utf8_lossy(&inspect.stdout);
    assert!(inspect.contains("selfagent.snapshot"), "{inspect:.300}");
    for secret in secrets.values() {
        assert!(
            !inspect.contains(secret),
            "a snapshot image keeps a credential"
        );
    }
}

#[tokio::test]
async fn the_agent_cannot_replace_the_view() {
    let d = desktop().await;
    let view = d.sandbox.view_url().unwrap();
    let addr = d.sandbox.endpoints().await.unwrap().view.expect("a view");
    // As the agent: kill the view, then serve a page of its own on the view's port.
    let out = d
        .sandbox
        .sh(
            "kill -KILL $(pgrep -u selfagent python3); python3 -c 'import socket; s = socket.socket(); \
             s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((\"0.0.0.0\", 80))'",
            &Default::default(),
        )
        .await
        .unwrap();
    assert!(!out.success(), "the agent bound the view's port");
    assert!(
        out.stderr_text().contains("Permission denied"),
        "{}",
        out.stderr_text()
    );
    // The host's view still refuses a request without the token, and serves one with it.
    let (status, _, _) = http(addr, "/vnc.html", &[]);
    assert_eq!(status, 403);
    let path = &view[view.find("/vnc.html").unwrap()..];
    let (status, _, body) = http(addr, path, &[]);
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("noVNC"));
}

/// A window title is the agent's to set, terminal escapes included (OSC 52 writes the
/// clipboard of whoever runs the CLI): `sandbox windows` and `wait-window` print it with its
/// control characters replaced; `--json` escapes them as JSON does.
#[test]
fn window_titles_reach_the_terminal_without_their_escapes() {
    let (v, _guard) = up();
    let id = v["id"].as_str().unwrap();
    let started = agent(id, "setsid xfce4-terminal >/dev/null 2>&1 &");
    assert!(started.status.success(), "{}", stderr(&started));
    let waited = cli(&[
        "sandbox",
        "wait-window",
        id,
        "--class",
        "(?i)terminal",
        "--timeout",
        "60",
    ]);
    assert!(waited.status.success(), "{}", stderr(&waited));
    let set = agent(
        id,
        "xdotool search --class xfce4-terminal | while read w; do \
         xdotool set_window --name \"$(printf 'pwn\\033]52;c;aGk=\\007ed')\" $w; done",
    );
    assert!(set.status.success(), "{}", stderr(&set));
    let waited = cli(&[
        "sandbox",
        "wait-window",
        id,
        "--title",
        "aGk=",
        "--timeout",
        "30",
    ]);
    assert!(waited.status.success(), "{}", stderr(&waited));
    let listed = cli(&["sandbox", "windows", id]);
    assert!(listed.status.success(), "{}", stderr(&listed));
    for out in [&waited, &listed] {
        let text = stdout(out);
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{7}'),
            "{text:?}"
        );
        assert!(text.contains("pwn\u{fffd}]52;c;aGk=\u{fffd}ed"), "{text:?}");
    }
    let json = cli(&["sandbox", "windows", id, "--json"]);
    let windows: Value = serde_json::from_str(stdout(&json).trim()).unwrap();
    assert!(
        windows
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["title"] == "pwn\u{1b}]52;c;aGk=\u{7}ed"),
        "{windows}"
    );
}
