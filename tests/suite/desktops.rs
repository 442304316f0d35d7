//! Desktops that last and fork, end to end: a persistent desktop keeps its files through
//! stop and start, runs an agent and stays; a saved snapshot (also of a persistent desktop's
//! home volume) starts new desktops that do not see each other's files.

use crate::common::model_server::{ModelServer, answer, call};
use crate::common::{Guard, bin};
use serde_json::{Value, json};
use std::path::Path;
use std::process::Stdio;

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
            % 100_000
    )
}

async fn selfagent(args: &[&str], home: &Path) -> (std::process::Output, String) {
    let out = tokio::process::Command::new(bin())
        .args(args)
        .env("HOME", home)
        .env_remove("OPENAI_BASE_URL")
        .env_remove("SELFAGENT_DB")
        .env_remove("SELFAGENT_CONFIG")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let log = format!(
        "selfagent {}: exit {:?}\nstdout:\n{}\nstderr:\n{}",
        args.join(" "),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, log)
}

/// Runs a shell command as the desktop's user; its stdout.
fn exec(id: &str, script: &str) -> String {
    let out = std::process::Command::new("docker")
        .args(["exec", "-u", "user", id, "sh", "-c", script])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn docker(args: &[&str]) -> String {
    let out = std::process::Command::new("docker")
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Removes, on drop, a persistent desktop with its volume, or a saved snapshot.
enum Cleanup {
    Persistent(String),
    Snapshot(String),
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        match self {
            Cleanup::Persistent(name) => {
                docker(&["rm", "-f", "-v", &format!("selfagent-{name}")]);
                docker(&["volume", "rm", "-f", &format!("selfagent-home-{name}")]);
            }
            Cleanup::Snapshot(tag) => {
                docker(&["rmi", "-f", &format!("selfagent-snap:{tag}")]);
                // Also when the name was removed first and the image outlived it, unnamed.
                let ids = docker(&[
                    "images",
                    "-q",
                    "--filter",
                    &format!("label=selfagent.saved={tag}"),
                ]);
                for id in ids.split_whitespace() {
                    docker(&["rmi", "-f", id]);
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_persistent_desktop_keeps_its_files_runs_agents_and_forks_with_its_home() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let name = unique("keep");
    let _cleanup = Cleanup::Persistent(name.clone());
    let (out, log) = selfagent(
        &["sandbox", "up", "--name", &name, "--persist", "--json"],
        home,
    )
    .await;
    assert!(out.status.success(), "{log}");
    let up: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(up["ttl"], 0, "a persistent desktop has no TTL unless given");
    let id = up["id"].as_str().unwrap().to_owned();
    exec(&id, "echo kept across restarts > ~/notes.txt");

    // Stopped, it is kept (prune included) with its files.
    let (out, log) = selfagent(&["sandbox", "stop", &name], home).await;
    assert!(out.status.success(), "{log}");
    let (out, log) = selfagent(&["sandbox", "prune", "--json"], home).await;
    assert!(out.status.success(), "{log}");
    let (out, log) = selfagent(&["sandbox", "ls", "--json"], home).await;
    let listed: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let me = listed
        .iter()
        .find(|s| s["name"] == name.as_str())
        .unwrap_or_else(|| panic!("pruned: {log}"));
    assert_eq!(me["persistent"], true);
    assert_ne!(me["state"], "running");

    let (out, log) = selfagent(&["sandbox", "start", &name, "--json"], home).await;
    assert!(out.status.success(), "{log}");
    assert_eq!(exec(&id, "cat ~/notes.txt"), "kept across restarts");

    // An agent runs on it and leaves it running, files and all.
    let server = ModelServer::start(
        vec![
            call(json!({"action": "key", "text": "ctrl+alt+t"})),
            answer("done"),
        ],
        (1280, 800),
    )
    .await;
    let db = home.join("rec.db");
    let out = tokio::process::Command::new(bin())
        .args([
            "run",
            "--headless",
            "--json",
            "--desktop",
            &name,
            "--base-url",
            &server.base_url(),
            "--db",
            db.to_str().unwrap(),
            "open a terminal",
        ])
        .env("HOME", home)
        .env("OPENAI_API_KEY", "sk-test")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sandbox = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find_map(|e| e["sandbox"].as_str().map(str::to_owned))
        .unwrap_or_default();
    assert_eq!(sandbox, id, "the episode ran on the named desktop");
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.Running}}", &id]),
        "true"
    );
    assert_eq!(exec(&id, "cat ~/notes.txt"), "kept across restarts");

    // Its home is a volume: a snapshot carries it into a fork.
    let tag = unique("home");
    let _snapshot = Cleanup::Snapshot(tag.clone());
    let (out, log) = selfagent(&["sandbox", "snapshot", &name, &tag], home).await;
    assert!(out.status.success(), "{log}");
    let (out, log) = selfagent(&["sandbox", "up", "--from", &tag, "--json"], home).await;
    assert!(out.status.success(), "{log}");
    let fork: Value = serde_json::from_slice(&out.stdout).unwrap();
    let fork = Guard(fork["id"].as_str().unwrap().to_owned());
    assert_eq!(exec(&fork.0, "cat ~/notes.txt"), "kept across restarts");
    drop(fork);

    // Removed with its volume, nothing is left.
    let (out, log) = selfagent(&["sandbox", "rm", &name, "--volumes"], home).await;
    assert!(out.status.success(), "{log}");
    assert!(docker(&["ps", "-aq", "--filter", &format!("name=selfagent-{name}")]).is_empty());
    assert!(
        docker(&[
            "volume",
            "ls",
            "-q",
            "--filter",
            &format!("name=selfagent-home-{name}")
        ])
        .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn forks_of_a_snapshot_start_alike_and_stay_apart() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let (out, log) = selfagent(&["sandbox", "up", "--json", "--no-pool"], home).await;
    assert!(out.status.success(), "{log}");
    let base: Value = serde_json::from_slice(&out.stdout).unwrap();
    let base = Guard(base["id"].as_str().unwrap().to_owned());
    exec(&base.0, "echo from the base > ~/base.txt");

    let tag = unique("fork");
    let _snapshot = Cleanup::Snapshot(tag.clone());
    let (out, log) = selfagent(&["sandbox", "snapshot", &base.0, &tag], home).await;
    assert!(out.status.success(), "{log}");
    drop(base);
    let (out, log) = selfagent(&["sandbox", "snapshots", "--saved", "--json"], home).await;
    let saved: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(saved.iter().any(|s| s["tag"] == tag.as_str()), "{log}");

    let mut forks = Vec::new();
    for _ in 0..2 {
        let (out, log) = selfagent(&["sandbox", "up", "--from", &tag, "--json"], home).await;
        assert!(out.status.success(), "{log}");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        forks.push(Guard(v["id"].as_str().unwrap().to_owned()));
    }
    for f in &forks {
        assert_eq!(exec(&f.0, "cat ~/base.txt"), "from the base");
    }
    exec(&forks[0].0, "echo only mine > ~/mine.txt");
    assert_eq!(exec(&forks[0].0, "cat ~/mine.txt"), "only mine");
    assert_eq!(
        exec(&forks[1].0, "test -e ~/mine.txt && echo seen || echo apart"),
        "apart"
    );
    // No credential of the desktop it came from is in the image.
    let config = docker(&["image", "inspect", &format!("selfagent-snap:{tag}")]);
    assert!(!config.contains("VNC_PASSWORD") && !config.contains("VIEW_TOKEN"));

    // Removing it while its forks run takes its name; the image goes with the last fork,
    // at the next prune.
    let (out, log) = selfagent(&["sandbox", "snapshot", "--remove", &tag], home).await;
    assert!(out.status.success(), "{log}");
    let (out, log) = selfagent(&["sandbox", "up", "--from", &tag], home).await;
    assert!(!out.status.success());
    assert!(log.contains("no snapshot"), "{log}");
    let image = || {
        docker(&[
            "images",
            "-q",
            "--filter",
            &format!("label=selfagent.saved={tag}"),
        ])
    };
    let unnamed = image();
    assert!(!unnamed.is_empty(), "kept while its forks run");
    let (out, log) = selfagent(&["sandbox", "prune", "--json"], home).await;
    assert!(out.status.success(), "{log}");
    assert_eq!(image(), unnamed, "a fork still uses it: {log}");
    drop(forks);
    let (out, log) = selfagent(&["sandbox", "prune", "--json"], home).await;
    assert!(out.status.success(), "{log}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["images"].as_array().map(Vec::len), Some(1), "{log}");
    assert!(image().is_empty(), "{log}");
}
