//! The real `selfagent` binary against real containers.

use crate::common::wait::eventually_blocking;
use crate::common::{Guard, cli, cli_with_stdin, decode_png, stderr, stdout};
use pretty_assertions::assert_eq;
use serde_json::Value;
use std::time::Duration;

fn up(extra: &[&str]) -> (Value, Guard) {
    let mut args = vec!["sandbox", "up", "--json"];
    if !extra.contains(&"--ttl") {
        args.extend(["--ttl", "600"]);
    }
    args.extend_from_slice(extra);
    let out = cli(&args);
    assert!(out.status.success(), "up failed: {}", stderr(&out));
    let v: Value =
        serde_json::from_str(stdout(&out).trim()).expect("up --json prints one JSON object");
    let id = v["id"].as_str().expect("an id").to_owned();
    (v, Guard(id))
}

fn ls() -> Vec<Value> {
    let out = cli(&["sandbox", "ls", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_str(stdout(&out).trim()).unwrap()
}

fn listed(id: &str) -> Option<Value> {
    ls().into_iter().find(|s| s["id"] == id)
}

#[test]
fn up_shot_act_windows_down() {
    let (v, _guard) = up(&["--width", "1024", "--height", "600"]);
    let id = v["id"].as_str().unwrap().to_owned();
    assert!(v["vnc"].as_str().unwrap().starts_with("127.0.0.1:"), "{v}");
    assert!(
        v["view_url"]
            .as_str()
            .unwrap()
            .starts_with("http://127.0.0.1:"),
        "{v}"
    );
    assert_eq!(
        (v["width"].as_u64(), v["height"].as_u64()),
        (Some(1024), Some(600))
    );
    assert!(listed(&id).is_some_and(|s| s["state"] == "running"));

    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("shot.png");
    let out = cli(&["sandbox", "shot", &id[..12], "-o", png.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        decode_png(&std::fs::read(&png).unwrap()).dimensions(),
        (1024, 600)
    );

    let out = cli(&[
        "sandbox",
        "act",
        &id,
        r#"{"action":"left_click","coordinate":[300,200]}"#,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let r: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(r["ok"], true);
    let out = cli(&["sandbox", "act", &id, r#"{"action":"cursor_position"}"#]);
    let r: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(r["cursor"], serde_json::json!([300, 200]));

    let out = cli(&[
        "sandbox",
        "act",
        &id,
        r#"{"action":"launch","app":"terminal"}"#,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cli(&[
        "sandbox",
        "wait-window",
        &id,
        "--class",
        "(?i)terminal",
        "--timeout",
        "30",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let w: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    let out = cli(&["sandbox", "windows", &id, "--json"]);
    let windows: Vec<Value> = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert!(
        windows.iter().any(|x| x["id"] == w["window"]["id"]),
        "{windows:?}"
    );

    let out = cli(&["sandbox", "down", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(listed(&id).is_none(), "down left the container behind");
}

#[test]
fn bad_actions_are_rejected_with_exit_code_2() {
    let (v, _guard) = up(&[]);
    let id = v["id"].as_str().unwrap();
    for (action, needle) in [
        (
            r#"{"action":"key","text":"ctrl+Nope"}"#,
            "unknown key 'Nope'",
        ),
        (
            r#"{"action":"left_click","coordinate":[5000,1]}"#,
            "outside the 1280x800 screen",
        ),
        (r#"{"action":"fly"}"#, "unknown action 'fly'"),
        (r#"{not json"#, "not valid JSON"),
    ] {
        let out = cli(&["sandbox", "act", id, action]);
        assert_eq!(out.status.code(), Some(2), "{action}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{action}: {}", stderr(&out));
    }
    let out = cli(&[
        "sandbox",
        "wait-window",
        id,
        "--title",
        "^never$",
        "--timeout",
        "0.5",
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("timed out"), "{}", stderr(&out));
}

#[test]
fn exec_passes_exit_codes_and_stdin_and_cp_copies_both_ways() {
    let (v, _guard) = up(&[]);
    let id = v["id"].as_str().unwrap();
    let out = cli(&["sandbox", "exec", id, "--", "sh", "-c", "echo hi; exit 7"]);
    assert_eq!(
        (out.status.code(), stdout(&out)),
        (Some(7), "hi\n".to_owned())
    );
    let data: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let out = cli_with_stdin(
        &[
            "sandbox",
            "exec",
            "-i",
            id,
            "--",
            "sh",
            "-c",
            "cat > /tmp/in.bin",
        ],
        &data,
    );
    assert!(out.status.success(), "{}", stderr(&out));

    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("out.bin");
    let out = cli(&[
        "sandbox",
        "cp",
        &format!("{id}:/tmp/in.bin"),
        local.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        std::fs::read(&local).unwrap() == data,
        "bytes differ after exec -i and cp"
    );

    let up_src = dir.path().join("up.txt");
    std::fs::write(&up_src, "uploaded ✓").unwrap();
    let out = cli(&[
        "sandbox",
        "cp",
        up_src.to_str().unwrap(),
        &format!("{id}:/home/user/x/y.txt"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cli(&["sandbox", "exec", id, "--", "cat", "/home/user/x/y.txt"]);
    assert_eq!(stdout(&out), "uploaded ✓");
}

#[test]
fn ttl_stops_the_desktop_and_prune_removes_it() {
    // Long enough to outlive startup (up waits for the desktop to be drawn), short enough
    // for a test.
    let (v, _guard) = up(&["--ttl", "6"]);
    let id = v["id"].as_str().unwrap().to_owned();
    // The desktop stops itself when its TTL runs out, with no selfagent process around.
    let s = eventually_blocking(
        "the desktop to stop at its TTL",
        Duration::from_secs(20),
        || {
            let s = listed(&id).expect("still listed until pruned");
            if s["state"] != "running" {
                Ok(s)
            } else {
                Err(s.to_string())
            }
        },
    );
    assert_eq!(s["expired"], true, "{s}");
    let out = cli(&["sandbox", "prune", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert!(
        report["removed"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == id),
        "{report}"
    );
    assert!(listed(&id).is_none(), "prune left the container behind");
}

/// Creates (never starts) a selfagent-labelled container owned by `owner` (none if empty),
/// labelled as made `age` seconds ago.
fn created_container(owner: &str, age: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - age;
    let out = std::process::Command::new("docker")
        .args([
            "create",
            "--label",
            &format!("selfagent.created={now}"),
            "--label",
            "selfagent.ttl=600",
            "--label",
            &format!("selfagent.owner={owner}"),
            "--label",
            "selfagent.test=prune",
            "selfagent-desktop:latest",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out).trim().to_owned()
}

#[test]
fn prune_leaves_a_desktop_its_living_owner_is_starting() {
    // Between create and start a desktop is `created`: a prune run by another process at
    // that moment must leave it alone (detached ones included: they have no owner) and
    // take only an old one whose owner is gone.
    let mine = created_container(&selfagent::process::owner_token(), 0);
    let _g0 = Guard(mine.clone());
    let detached = created_container("", 0);
    let _g1 = Guard(detached.clone());
    let mut dead = selfagent::process::owner_token()
        .split('/')
        .map(str::to_owned)
        .collect::<Vec<_>>();
    dead[2] = "1".to_owned();
    let theirs = created_container(&dead.join("/"), 3600);
    let _g2 = Guard(theirs.clone());
    let out = cli(&["sandbox", "prune", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    let removed: Vec<&str> = report["removed"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    assert!(!removed.contains(&mine.as_str()), "{report}");
    assert!(!removed.contains(&detached.as_str()), "{report}");
    assert!(removed.contains(&theirs.as_str()), "{report}");
    assert!(listed(&mine).is_some());
}

#[test]
fn unknown_sandboxes_and_a_stopped_one_are_clear_errors() {
    let out = cli(&["sandbox", "shot", "no-such-sandbox", "-o", "/tmp/x.png"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no selfagent sandbox with id or name 'no-such-sandbox'"),
        "{}",
        stderr(&out)
    );

    let (v, _guard) = up(&[]);
    let id = v["id"].as_str().unwrap();
    assert!(
        std::process::Command::new("docker")
            .args(["stop", "-t", "1", id])
            .status()
            .unwrap()
            .success()
    );
    let out = cli(&["sandbox", "act", id, r#"{"action":"screenshot"}"#]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("is not running"), "{}", stderr(&out));
}

#[test]
fn output_into_a_closed_pipe_ends_quietly_and_replay_needs_a_terminal() {
    // `selfagent tasks check DIR | head -1`: the reader is gone before the output is. The
    // pipe's read end is closed before the process starts, so every write meets EPIPE.
    let tasks = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tasks");
    for args in [
        vec!["tasks", "check", tasks],
        vec!["sandbox", "ls"],
        vec!["sandbox", "ls", "--json"],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = std::process::Command::new(crate::common::bin())
            .args(&args)
            .stdin(std::process::Stdio::null())
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        assert!(
            !stderr(&out).contains("panicked"),
            "{args:?}: {}",
            stderr(&out)
        );
    }

    // No terminal (ssh without a tty, a pipe, a cron job): a clear error, no panic, and the
    // terminal left alone.
    let db = tempfile::tempdir().unwrap();
    let db = db.path().join("rec.db");
    selfagent::record::Db::open(&db).unwrap();
    let out = cli(&["replay", "--db", db.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("needs a terminal") || stderr(&out).contains("is not one"));
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    assert!(
        out.stdout.is_empty(),
        "escape codes on a pipe: {:?}",
        out.stdout
    );
}

/// Status words are coloured when asked (`--color always`; on a terminal by default), never
/// into a pipe or with `--color never`; completions and the man page come from the same
/// definitions as `--help`.
#[test]
fn colours_completions_and_the_man_page() {
    let demo = concat!(env!("CARGO_MANIFEST_DIR"), "/recordings/demo.db");
    let coloured = cli(&["sessions", "ls", "--db", demo, "--color", "always"]);
    assert!(
        stdout(&coloured).contains("\x1b[32msucceeded\x1b[0m"),
        "{}",
        stdout(&coloured)
    );
    for args in [
        &["sessions", "ls", "--db", demo][..],
        &["sessions", "ls", "--db", demo, "--color", "never"][..],
    ] {
        let plain = cli(args);
        assert!(plain.status.success());
        assert!(!stdout(&plain).contains('\x1b'), "{}", stdout(&plain));
        assert!(stdout(&plain).contains("succeeded"));
    }
    let bash = cli(&["completions", "bash"]);
    assert!(
        stdout(&bash).contains("complete -F _selfagent"),
        "{}",
        stdout(&bash)
    );
    assert!(stdout(&bash).contains("--max-cost"));
    let man = cli(&["man"]);
    assert!(stdout(&man).starts_with(".ie") || stdout(&man).contains(".TH selfagent"));
    assert!(stdout(&man).contains("doctor"));
}
