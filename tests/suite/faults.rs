//! Faults, injected for real: a server that echoes the key, a desktop killed mid-step, a
//! recording on a disk that fills up, a reply that asks for minutes of waiting under a
//! short time limit. Each keeps what was recorded and says what happened, with its own
//! exit code.

use crate::common::model_server::{ModelServer, Reply, call, calls};
use crate::common::screens::terminal_ready;
use crate::common::{Guard, SnapshotsOf, bin, text};
use pretty_assertions::assert_eq;
use selfagent::record::Db;
use serde_json::{Value, json};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

const KEY: &str = "sk-selfagent-echo-0123456789abcdef";

fn selfagent(args: &[&str], home: &Path) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(bin());
    c.args(args)
        .env("OPENAI_API_KEY", KEY)
        .env("HOME", home)
        .env_remove("OPENAI_BASE_URL")
        .env_remove("SELFAGENT_DB")
        .env_remove("SELFAGENT_CONFIG")
        .stdin(Stdio::null());
    c
}

/// Every file under `dir` (recursively) is free of `needle`.
fn nowhere_in(dir: &Path, needle: &str) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            nowhere_in(&path, needle);
        } else {
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{} holds the key",
                path.display()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_the_server_echoes_reaches_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let db = home.join("rec.db");
    let _snapshots = SnapshotsOf(db.clone());
    let server =
        ModelServer::start((0..8).map(|_| Reply::EchoAuth(401)).collect(), (1280, 800)).await;
    let url = server.base_url();
    let db_s = db.to_str().unwrap();
    let mut outputs = Vec::new();
    for extra in [&["--json"][..], &[][..]] {
        let mut args = vec!["run", "--headless", "--base-url", &url, "--db", db_s];
        args.extend_from_slice(extra);
        args.push("say hello");
        let out = selfagent(&args, home).output().await.unwrap();
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        outputs.push(text(&out));
    }
    let report = home.join("report");
    let task = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tasks/terminal-mkdir.toml");
    let out = selfagent(
        &[
            "batch",
            task.to_str().unwrap(),
            "--base-url",
            &url,
            "--db",
            db_s,
            "--report",
            report.to_str().unwrap(),
        ],
        home,
    )
    .output()
    .await
    .unwrap();
    outputs.push(text(&out));
    // The server did echo it, and it was understood as what it is: an auth failure.
    assert!(outputs[0].contains("HTTP 401"), "{}", outputs[0]);
    assert!(outputs[0].contains("[redacted]"), "{}", outputs[0]);
    for o in &outputs {
        assert!(!o.contains(KEY), "the key reached the output:\n{o}");
    }
    assert!(report.join("report.json").exists());
    nowhere_in(home, KEY);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_time_limit_holds_while_actions_run() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("rec.db");
    let waits: Vec<Value> = (0..5)
        .map(|_| json!({"action": "wait", "duration": 100}))
        .collect();
    let server = ModelServer::start(vec![calls(waits)], (1280, 800)).await;
    let started = Instant::now();
    let out = selfagent(
        &[
            "run",
            "--headless",
            "--timeout",
            "5",
            "--base-url",
            &server.base_url(),
            "--db",
            db.to_str().unwrap(),
            "wait a lot",
        ],
        dir.path(),
    )
    .output()
    .await
    .unwrap();
    // Desktop start and removal around a 5 s episode.
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let rec = Db::open_read(&db).unwrap();
    let s = &rec.sessions(1).unwrap()[0];
    assert_eq!(s.status, "failed");
    assert_eq!(s.meta["ended_by"], "time_limit");
    assert!(s.wall_ms.unwrap() < 7000, "{:?}", s.wall_ms);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_desktop_killed_mid_step_is_recorded_as_the_harness_failing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("rec.db");
    let server = ModelServer::start(
        vec![
            call(json!({"action": "mouse_move", "coordinate": [10, 10]})),
            call(json!({"action": "wait", "duration": 60})),
        ],
        (1280, 800),
    )
    .await;
    let mut child = selfagent(
        &[
            "run",
            "--headless",
            "--json",
            "--base-url",
            &server.base_url(),
            "--db",
            db.to_str().unwrap(),
            "wait for the end",
        ],
        dir.path(),
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(child.stdout.take().unwrap()));
    let mut sandbox = String::new();
    let mut seen = Vec::new();
    while let Some(line) = lines.next_line().await.unwrap() {
        let v: Value = serde_json::from_str(&line).unwrap();
        sandbox = v["sandbox"].as_str().unwrap_or_default().to_owned();
        seen.push(v.clone());
        // The second step's 60 s wait is what comes next: kill the desktop under it (before
        // the wait begins or during it, the loop must find the desktop gone, not sleep on).
        if v["type"] == "model_reply" && v["step"] == 2 {
            let killed = std::process::Command::new("docker")
                .args(["kill", &sandbox])
                .output()
                .unwrap();
            assert!(killed.status.success());
        }
    }
    let _guard = Guard(sandbox);
    let out = child.wait_with_output().await.unwrap();
    assert_eq!(out.status.code(), Some(4), "{seen:#?}");
    let finished = seen.iter().find(|e| e["type"] == "finished").unwrap();
    let error = finished["error"].as_str().unwrap();
    assert!(error.contains("exited (exit code 137)"), "{error}");
    let rec = Db::open_read(&db).unwrap();
    let s = &rec.sessions(1).unwrap()[0];
    assert_eq!(s.status, "error");
    assert_eq!(s.meta["ended_by"], "harness");
    let steps = rec.steps(&s.id).unwrap();
    assert_eq!(steps.len(), 2, "the step in progress is recorded");
    assert!(
        steps[1]
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("exit code 137"),
        "{:?}",
        steps[1].error
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_recording_that_cannot_be_written_stops_the_episode() {
    // A small filesystem of its own that fills up: a tmpfs (as root, as CI runs).
    assert!(
        std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout == b"0\n"),
        "this test mounts a small tmpfs and needs root (CI runs as root)"
    );
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let mounted = std::process::Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=360k",
            "tmpfs",
            small.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(mounted.success());
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(small.clone());
    let db = small.join("rec.db");
    // Each step changes the screen (a new screenshot to store) until the disk is full.
    let mut script = vec![call(json!({"action": "key", "text": "ctrl+alt+t"}))];
    script.push(Reply::When(
        terminal_ready,
        Box::new(call(json!({"action": "type", "text": "a"}))),
    ));
    for i in 0..40 {
        script.push(call(
            json!({"action": "type", "text": format!("echo step {i} {}\n", "x".repeat(i * 3))}),
        ));
    }
    let server = ModelServer::start(script, (1280, 800)).await;
    let out = selfagent(
        &[
            "run",
            "--headless",
            "--keep",
            "--json",
            "--base-url",
            &server.base_url(),
            "--db",
            db.to_str().unwrap(),
            "fill the disk",
        ],
        dir.path(),
    )
    .output()
    .await
    .unwrap();
    let events: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    if let Some(s) = events.iter().find_map(|e| e["sandbox"].as_str()) {
        drop(Guard(s.to_owned()));
    }
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("the recording failed"),
        "{}",
        text(&out)
    );
    let steps_run = events
        .iter()
        .filter(|e| e["type"] == "step_started")
        .count();
    assert!(
        steps_run < 40,
        "the agent ran on unrecorded: {steps_run} steps"
    );
    // What was written is intact, and readable.
    let copy = dir.path().join("copy");
    std::fs::create_dir(&copy).unwrap();
    for f in std::fs::read_dir(&small).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, copy.join(f.file_name().unwrap())).unwrap();
    }
    let conn = rusqlite::Connection::open(copy.join("rec.db")).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    drop(conn);
    let rec = Db::open_read(&copy.join("rec.db")).unwrap();
    let s = &rec.sessions(1).unwrap()[0];
    let recorded = rec.steps(&s.id).unwrap().len();
    assert!(recorded >= 1, "nothing was recorded before the disk filled");
    assert!(recorded < steps_run + 1);
}

/// A recording on read-only media can be listed, shown and exported; another program's
/// SQLite file is refused and left byte for byte; a mistyped path is not created.
#[tokio::test(flavor = "multi_thread")]
async fn read_commands_change_nothing_and_work_on_read_only_recordings() {
    use selfagent::agent::{Emitter, Event, Frame, Outcome, SessionInfo, Status};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let rw = home.join("rw");
    std::fs::create_dir(&rw).unwrap();
    let db = rw.join("rec.db");
    // A real recording, written by the recorder.
    let mut emitter = Emitter::new();
    let recorder =
        selfagent::record::Recorder::start(&db, Vec::new(), emitter.subscribe(64)).unwrap();
    let rgb = vec![90u8; 32 * 20 * 3];
    let png = Arc::new(selfagent::desktop::encode_png(32, 20, &rgb).unwrap());
    let frame = Frame::new(png, 32, 20);
    emitter
        .emit(Event::SessionStarted(SessionInfo {
            session: "20261128-000000-abcdef".into(),
            sandbox: "none".into(),
            instruction: "read me".into(),
            task_id: None,
            model: "m".into(),
            base_url: "http://x/v1".into(),
            protocol: "tools".into(),
            coords: "native".into(),
            image: "img".into(),
            engine: String::new(),
            width: 32,
            height: 20,
            sent_width: 32,
            sent_height: 20,
            max_steps: 3,
            timeout_s: 60.0,
            task: None,
            price: None,
            source: None,
            rerun_of: None,
        }))
        .await;
    emitter.emit(Event::StepStarted { step: 1 }).await;
    emitter
        .emit(Event::Observation {
            step: 1,
            frame: frame.clone(),
        })
        .await;
    emitter
        .emit(Event::StepFinished {
            step: 1,
            frame,
            step_ms: 1.0,
        })
        .await;
    emitter
        .emit(Event::Finished(Outcome {
            status: Status::Succeeded,
            ended_by: selfagent::agent::EndedBy::Model,
            answer: Some("ok".into()),
            error: None,
            steps: 1,
            tokens_in: 0,
            tokens_out: 0,
            wall_ms: 5,
            cost: None,
        }))
        .await;
    drop(emitter);
    recorder.finish().await;

    // The same directory, mounted read-only (as root), or made read-only otherwise.
    let ro = home.join("ro");
    std::fs::create_dir(&ro).unwrap();
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout == b"0\n");
    struct Unmount(Option<std::path::PathBuf>);
    impl Drop for Unmount {
        fn drop(&mut self) {
            if let Some(p) = &self.0 {
                let _ = std::process::Command::new("umount").arg(p).status();
            }
        }
    }
    let _unmount = if root {
        let ok = std::process::Command::new("mount")
            .args([
                "--bind",
                "-o",
                "ro",
                rw.to_str().unwrap(),
                ro.to_str().unwrap(),
            ])
            .status()
            .unwrap()
            .success()
            && std::process::Command::new("mount")
                .args(["-o", "remount,bind,ro", ro.to_str().unwrap()])
                .status()
                .unwrap()
                .success();
        assert!(ok, "mounting read-only");
        Unmount(Some(ro.clone()))
    } else {
        use std::os::unix::fs::PermissionsExt;
        std::fs::remove_dir(&ro).unwrap();
        std::fs::rename(&rw, &ro).unwrap();
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
        Unmount(None)
    };
    let ro_db = ro.join("rec.db");
    let before = std::fs::read(&ro_db).unwrap();
    let db_s = ro_db.to_str().unwrap();
    for args in [
        vec!["sessions", "ls", "--db", db_s],
        vec!["sessions", "show", "20261128", "--db", db_s],
        vec![
            "export",
            "20261128",
            "--html",
            "-o",
            home.join("ep.html").to_str().unwrap().to_owned().leak(),
            "--db",
            db_s,
        ],
    ] {
        let out = selfagent(&args, home).output().await.unwrap();
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        if args[1] == "ls" {
            assert!(
                String::from_utf8_lossy(&out.stdout).contains("read me"),
                "{}",
                text(&out)
            );
        }
    }
    assert_eq!(std::fs::read(&ro_db).unwrap(), before);

    // Someone else's database: refused, untouched, not even its journal mode.
    let foreign = home.join("notes.db");
    {
        let c = rusqlite::Connection::open(&foreign).unwrap();
        c.execute_batch("CREATE TABLE notes (body TEXT); INSERT INTO notes VALUES ('mine');")
            .unwrap();
    }
    let before = std::fs::read(&foreign).unwrap();
    for args in [
        vec!["sessions", "ls", "--db", foreign.to_str().unwrap()],
        vec!["grade", "--all", "--db", foreign.to_str().unwrap()],
    ] {
        let out = selfagent(&args, home).output().await.unwrap();
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(
            text(&out).contains("not a selfagent recording"),
            "{}",
            text(&out)
        );
    }
    assert_eq!(std::fs::read(&foreign).unwrap(), before);
    let mode: String = rusqlite::Connection::open(&foreign)
        .unwrap()
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "delete");

    // A mistyped path is named, and not created.
    let typo = home.join("typo.db");
    let out = selfagent(&["sessions", "ls", "--db", typo.to_str().unwrap()], home)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("typo.db"), "{}", text(&out));
    assert!(!typo.exists());
}

/// A refused key, a dead endpoint, a missing model: found before any desktop starts, in a
/// second, with the fix; `doctor` says the same, and what is fine.
#[tokio::test(flavor = "multi_thread")]
async fn endpoint_mistakes_are_found_before_a_desktop_starts() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let db = home.join("rec.db");
    let db_s = db.to_str().unwrap();
    let server = ModelServer::start(Vec::new(), (1280, 800)).await;
    server.refuse_listing(401);
    let url = server.base_url();
    let task = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tasks/terminal-mkdir.toml");
    for args in [
        vec![
            "run",
            "--headless",
            "--base-url",
            &url,
            "--db",
            db_s,
            "say hello",
        ],
        vec![
            "batch",
            task.to_str().unwrap(),
            "--base-url",
            &url,
            "--db",
            db_s,
        ],
        vec!["calibrate", "--base-url", &url, "--db", db_s],
    ] {
        let started = Instant::now();
        let out = selfagent(&args, home).output().await.unwrap();
        let shown = text(&out);
        assert_eq!(out.status.code(), Some(1), "{shown}");
        assert!(
            shown.contains("refused the key (HTTP 401)"),
            "{}: {shown}",
            args[0]
        );
        assert!(
            shown.contains("fix: the key comes from OPENAI_API_KEY"),
            "{shown}"
        );
        assert!(shown.contains("[redacted]"), "{shown}");
        assert!(!shown.contains(KEY), "the key reached the output:\n{shown}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{} took {:?}: it started a desktop first",
            args[0],
            started.elapsed()
        );
    }
    assert!(
        server.requests().is_empty(),
        "no model call was made with a refused key"
    );
    let out = selfagent(&["doctor", "--base-url", &url, "--db", db_s], home)
        .output()
        .await
        .unwrap();
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(shown.contains("FAIL  endpoint"), "{shown}");
    assert!(!shown.contains(KEY), "{shown}");

    // No --model, and the server lists one: that one, and doctor says so, with the protocol.
    let good = ModelServer::start(Vec::new(), (1280, 800)).await;
    let out = selfagent(
        &[
            "doctor",
            "--json",
            "--base-url",
            &good.base_url(),
            "--db",
            db_s,
        ],
        home,
    )
    .output()
    .await
    .unwrap();
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(0), "{shown}");
    let found: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let of = |what: &str| {
        found
            .iter()
            .find(|f| f["what"] == what)
            .unwrap_or_else(|| panic!("no {what} finding: {shown}"))
            .clone()
    };
    for what in [
        "engine",
        "image",
        "recording",
        "endpoint",
        "model",
        "protocol",
    ] {
        assert_eq!(of(what)["level"], "ok", "{what}: {shown}");
    }
    assert!(
        of("model")["text"]
            .as_str()
            .unwrap()
            .starts_with("scripted (the only model"),
        "{shown}"
    );
    assert!(
        of("protocol")["text"]
            .as_str()
            .unwrap()
            .starts_with("tools, coordinates native"),
        "{shown}"
    );
    // A model the server does not list is a note, not a failure (aliases exist).
    let doctor = |extra: &'static [&'static str]| {
        let url = good.base_url();
        async move {
            let mut args = vec!["doctor", "--base-url", &url, "--db", db_s];
            args.extend_from_slice(extra);
            selfagent(&args, home).output().await.unwrap()
        }
    };
    let out = doctor(&["--model", "nosuch-model"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("note  model      nosuch-model is not among"),
        "{}",
        text(&out)
    );
    // A missing image is a failure with the command that makes it.
    let out = doctor(&["--image", "nosuch:tag"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("fix: selfagent sandbox build"),
        "{}",
        text(&out)
    );
    assert!(good.requests().is_empty(), "doctor made a model call");
}
