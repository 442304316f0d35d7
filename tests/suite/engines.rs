//! Several Docker engines: a second real dockerd on this machine (`sandbox/second-engine.sh`)
//! stands in for another machine. One test, so that stopping that engine never pulls it from
//! under another test: a batch through tunnels on it, a batch over both engines with it
//! stopped mid-batch, and a persistent desktop on it through a restart of the engine.

use crate::common::bin;
use crate::common::model_server::{ModelServer, Reply, call, route};
use crate::common::wait::{check, eventually};
use selfagent::record::Db;
use serde_json::{Value, json};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

const SECOND: &str = "tcp://127.0.0.1:23750";
const LOCAL: &str = "unix:///var/run/docker.sock";

const TASK: &str = r#"
id = "reports-anywhere"
instruction = "In the open terminal, make a directory named 'reports', on whichever engine."

[limits]
max_steps = 6
timeout = 240

[[setup]]
launch = "terminal"

[[setup]]
wait_for_window = { class = "(?i)xfce4-terminal", timeout = 60 }

[check]
command = "test -d ~/reports"
"#;

fn second_engine(args: &[&str]) -> std::process::Output {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/sandbox/second-engine.sh");
    let out = std::process::Command::new("bash")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "second-engine.sh {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Starts the second engine again when dropped (also when the test fails), for the next run.
struct Restart;

impl Drop for Restart {
    fn drop(&mut self) {
        // No assertion here: a panic while unwinding would abort the test binary.
        let _ = std::process::Command::new("bash")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/sandbox/second-engine.sh"
            ))
            .arg("start")
            .output();
        // Whatever a failed run left there.
        let _ = std::process::Command::new("docker")
            .args([
                "-H",
                SECOND,
                "ps",
                "-aq",
                "--filter",
                "label=selfagent.created",
            ])
            .output()
            .map(|o| {
                for id in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                    let _ = std::process::Command::new("docker")
                        .args(["-H", SECOND, "rm", "-f", "-v", id])
                        .output();
                }
            });
        let _ = std::process::Command::new("docker")
            .args(["-H", SECOND, "volume", "rm", "-f", "selfagent-home-kept"])
            .output();
    }
}

fn batch(
    home: &Path,
    server: &ModelServer,
    db: &Path,
    report: &Path,
    extra: &[&str],
) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(bin());
    c.args([
        "batch",
        home.join("tasks").to_str().unwrap(),
        "--base-url",
        &server.base_url(),
        "--model",
        "scripted",
        "--db",
        db.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
        // Graded on the live desktop: no final-state images left on either engine.
        "--no-snapshot",
    ])
    .args(extra)
    .env("HOME", home)
    .env_remove("OPENAI_BASE_URL")
    .env_remove("SELFAGENT_DB")
    .env_remove("SELFAGENT_CONFIG")
    .env_remove("SELFAGENT_REACH")
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    c
}

fn report(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_spreads_over_two_engines_and_goes_on_when_one_stops() {
    second_engine(&["start", "--images", selfagent::sandbox::DEFAULT_IMAGE]);
    let _restart = Restart;
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    std::fs::create_dir_all(home.join("tasks")).unwrap();
    std::fs::write(home.join("tasks/reports.toml"), TASK).unwrap();
    let db = home.join("rec.db");
    let (gate, held) = tokio::sync::watch::channel(false);
    let server = ModelServer::routed(
        vec![route(
            "on whichever engine",
            vec![Reply::Gate(
                held,
                Box::new(call(json!({"action": "type", "text": "mkdir ~/reports\n"}))),
            )],
        )],
        (1280, 800),
    )
    .await;

    // 1. The second engine alone, its desktop driven through the Docker API only.
    gate.send(true).unwrap();
    let first = home.join("report-tunnels");
    let out = batch(
        home,
        &server,
        &db,
        &first,
        &["--engine", &format!("{SECOND},reach=tunnels")],
    )
    .output()
    .await
    .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{log}");
    let r = report(&first);
    assert_eq!(r["episodes"][0]["passed"], true, "{log}");
    let session = r["episodes"][0]["session_id"].as_str().unwrap().to_owned();
    let meta = Db::open_read(&db).unwrap().session(&session).unwrap().meta;
    assert_eq!(meta["engine"], SECOND, "{meta}");

    // 2. Both engines, one desktop each at a time; the second stops while its episode runs.
    gate.send(false).unwrap();
    let before = server.requests().len();
    let second = home.join("report-both");
    let child = batch(
        home,
        &server,
        &db,
        &second,
        &[
            "--repeat",
            "4",
            "--parallel",
            "2",
            "--engine",
            &format!("{LOCAL},max=1"),
            "--engine",
            &format!("{SECOND},max=1"),
        ],
    )
    .spawn()
    .unwrap();
    // Both first episodes are under way (their desktops ready, each waiting for the model).
    eventually(
        "two episodes to ask the model",
        Duration::from_secs(240),
        || {
            let asked = server.requests().len() - before;
            async move { check(asked >= 2, || format!("{asked} requests")) }
        },
    )
    .await;
    let on_second = std::process::Command::new("docker")
        .args([
            "-H",
            SECOND,
            "ps",
            "-q",
            "--filter",
            "label=selfagent.created",
        ])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&on_second.stdout).trim().is_empty(),
        "no desktop on the second engine"
    );
    second_engine(&["stop"]);
    gate.send(true).unwrap();
    let out = child.wait_with_output().await.unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Its episode was lost to the harness, and run again on the engine left
    // (`--retry-harness` 1): every episode passed there, the lost attempt listed apart.
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(
        log.contains(&format!("engine {SECOND} stopped answering")),
        "{log}"
    );
    assert!(log.contains("RETRY "), "{log}");
    let r = report(&second);
    let episodes = r["episodes"].as_array().unwrap();
    assert_eq!(episodes.len(), 4, "every episode ran: {log}");
    assert!(
        episodes
            .iter()
            .all(|e| e["engine"] == LOCAL && e["passed"] == true),
        "{log}"
    );
    let retried: Vec<&Value> = episodes
        .iter()
        .filter(|e| {
            e["harness_retries"]
                .as_array()
                .is_some_and(|a| a.len() == 1)
        })
        .collect();
    assert_eq!(retried.len(), 1, "{log}");
    assert_eq!(r["harness_errors"], 0, "{log}");
    let engines = r["batch"]["engines"].as_array().unwrap();
    let died: Vec<(&str, bool)> = engines
        .iter()
        .map(|e| (e["url"].as_str().unwrap(), e["died"] == true))
        .collect();
    assert_eq!(died, vec![(LOCAL, false), (SECOND, true)], "{log}");
    assert!(server.problems().is_empty(), "{:?}", server.problems());

    // 3. A persistent desktop outlives its engine's restart, with its files.
    second_engine(&["start"]);
    let on_second = |args: &[&str]| {
        std::process::Command::new(bin())
            .args(args)
            .env("HOME", home)
            .env("DOCKER_HOST", SECOND)
            .env_remove("SELFAGENT_REACH")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = on_second(&["sandbox", "up", "--name", "kept", "--persist", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = on_second(&[
        "sandbox",
        "exec",
        "kept",
        "--",
        "sh",
        "-c",
        "echo still here > ~/kept.txt",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    second_engine(&["stop"]);
    second_engine(&["start"]);
    // Back by itself (the engine restarts it), with the file, and ready to drive.
    eventually(
        "the engine to start the persistent desktop again",
        Duration::from_secs(90),
        || {
            let state = std::process::Command::new("docker")
                .args([
                    "-H",
                    SECOND,
                    "inspect",
                    "-f",
                    "{{.State.Running}}",
                    "selfagent-kept",
                ])
                .output()
                .unwrap();
            let running = String::from_utf8_lossy(&state.stdout).trim() == "true";
            let seen = String::from_utf8_lossy(&state.stderr).into_owned();
            async move { check(running, || seen) }
        },
    )
    .await;
    let out = on_second(&["sandbox", "start", "kept"]);
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{log}");
    let out = on_second(&[
        "sandbox",
        "exec",
        "kept",
        "--",
        "cat",
        "/home/user/kept.txt",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "still here",
        "{log}"
    );
    let shot = home.join("kept.png");
    let out = on_second(&["sandbox", "shot", "kept", "-o", shot.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = on_second(&["sandbox", "rm", "kept", "--volumes"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
