//! Batches people can finish and trust: a batch killed with SIGKILL and resumed runs each
//! episode once (the finished ones are not redone: counted in model calls and recorded
//! sessions), its error bars narrow with repeats, and `compare` tells two batches apart by
//! the one task that differs, warning that their images differ.

use crate::common::model_server::{ModelServer, Reply, Route, answer, route};
use crate::common::wait::{check, eventually};
use crate::common::{bin, text};
use selfagent::record::Db;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

/// Three tasks without setup: one passes and one fails whatever the model does, one is
/// judged (the scripted judge says `judged`).
fn write_tasks(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let task = |id: &str, check: &str| {
        std::fs::write(
            dir.join(format!("{id}.toml")),
            format!(
                "id = \"{id}\"\ninstruction = \"Answer done ({id}).\"\n[limits]\nmax_steps = 3\n\
                 timeout = 120\n[check]\n{check}\n"
            ),
        )
        .unwrap();
    };
    task("rs-pass", "command = \"true\"");
    task("rs-fail", "command = \"false\"");
    task("rs-judged", "judge = \"Did the agent answer done?\"");
}

/// Each task's conversation answers at once after `delay` (time to kill the batch in the
/// middle of an episode); the judge says `judged`.
fn routes(delay: Duration, judged: bool) -> Vec<Route> {
    ["rs-pass", "rs-fail", "rs-judged"]
        .iter()
        .map(|id| Route {
            judge: Some(answer(
                &json!({"passed": judged, "reason": "scripted judge"}).to_string(),
            )),
            ..route(
                &format!("({id})"),
                vec![Reply::Slow(delay, Box::new(answer("done")))],
            )
        })
        .collect()
}

fn selfagent(args: &[&str], home: &Path) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(bin());
    c.args(args)
        .env_remove("OPENAI_BASE_URL")
        .env_remove("SELFAGENT_DB")
        .env("HOME", home)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The `finished` lines of a batch's state log: (task, repeat) → session.
fn finished(report: &Path) -> BTreeMap<(String, u64), String> {
    std::fs::read_to_string(report.join("episodes.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["event"] == "finished")
        .map(|l| {
            let e = &l["episode"];
            (
                (
                    e["task_id"].as_str().unwrap().to_owned(),
                    e["repeat"].as_u64().unwrap(),
                ),
                e["session_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Requests of the agent's loop (a judge's request offers no tools).
fn episode_calls(server: &ModelServer) -> usize {
    server
        .requests()
        .iter()
        .filter(|r| r.get("tools").is_some())
        .count()
}

/// Removes a tag of the desktop image when dropped.
struct Tag(&'static str);

impl Drop for Tag {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["rmi", self.0])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_batch_resumes_once_each_and_compares_with_another() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let tasks = home.join("tasks");
    write_tasks(&tasks);
    let db = home.join("rec.db");
    let db_s = db.to_str().unwrap();
    let a = home.join("a");
    let server = ModelServer::routed(routes(Duration::from_millis(1500), false), (1280, 800)).await;
    let url = server.base_url();
    let args = [
        "batch",
        tasks.to_str().unwrap(),
        "--repeat",
        "3",
        "--no-snapshot",
        "--base-url",
        &url,
        "--model",
        "scripted",
        "--db",
        db_s,
        "--report",
        a.to_str().unwrap(),
    ];

    // 1. Killed (SIGKILL: no clean-up at all) once two episodes finished.
    let mut child = selfagent(&args, home).spawn().unwrap();
    eventually("two episodes to finish", Duration::from_secs(180), || {
        let done = finished(&a).len();
        async move { check(done >= 2, || format!("{done} finished")) }
    })
    .await;
    child.start_kill().unwrap();
    let killed = child.wait_with_output().await.unwrap();
    let before_kill = finished(&a);
    assert_eq!(
        killed.status.code(),
        None,
        "killed by a signal: {}",
        text(&killed)
    );
    let calls_before = episode_calls(&server);
    let state = read_json(&a.join("batch.json"));
    assert_eq!(state["jobs"].as_array().unwrap().len(), 9, "{state}");
    assert!(
        !state.to_string().contains("OPENAI_API_KEY=") && state["args"]["resume"].is_null(),
        "{state}"
    );

    // A flag beside --resume is refused: the batch runs as it started.
    let out = selfagent(
        &["batch", "--resume", a.to_str().unwrap(), "--repeat", "5"],
        home,
    )
    .output()
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("leave out --repeat"), "{}", text(&out));

    // 2. Resumed with no other flag.
    let out = selfagent(&["batch", "--resume", a.to_str().unwrap()], home)
        .output()
        .await
        .unwrap();
    let log = text(&out);
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(log.contains("resumed: "), "{log}");
    let r = read_json(&a.join("report.json"));
    let episodes = r["episodes"].as_array().unwrap();
    let listed: Vec<(String, u64)> = episodes
        .iter()
        .map(|e| {
            (
                e["task_id"].as_str().unwrap().to_owned(),
                e["repeat"].as_u64().unwrap(),
            )
        })
        .collect();
    let once: BTreeSet<(String, u64)> = listed.iter().cloned().collect();
    assert_eq!(
        (listed.len(), once.len()),
        (9, 9),
        "each task × repeat once: {listed:?}"
    );
    assert_eq!(r["batch"]["resumed"], 1, "{}", r["batch"]);
    // The episodes finished before the kill are in the report as they were, not redone.
    for (key, session) in &before_kill {
        let e = episodes
            .iter()
            .find(|e| e["task_id"] == key.0.as_str() && e["repeat"] == key.1)
            .unwrap();
        assert_eq!(e["session_id"], session.as_str(), "{e}");
    }
    let ran_after = 9 - before_kill.len();
    let calls_after = episode_calls(&server) - calls_before;
    assert_eq!(
        calls_after,
        ran_after,
        "one model call per episode run after the resume ({} finished before)",
        before_kill.len()
    );
    // Recorded sessions: the report's nine, and the one cut short by the kill if its
    // recording had begun (named by the episode that redid it), and nothing else.
    let redone: Vec<&str> = episodes
        .iter()
        .filter_map(|e| e["redone"].as_str())
        .collect();
    assert!(redone.len() <= 1, "{redone:?}");
    let rec = Db::open_read(&db).unwrap();
    let recorded: BTreeSet<String> = rec
        .task_sessions()
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    let reported: BTreeSet<String> = episodes
        .iter()
        .map(|e| e["session_id"].as_str().unwrap().to_owned())
        .collect();
    let cut_recorded: BTreeSet<String> = recorded.difference(&reported).cloned().collect();
    assert!(reported.is_subset(&recorded), "{reported:?} {recorded:?}");
    assert!(
        cut_recorded.iter().all(|s| redone.contains(&s.as_str())),
        "recorded but in no report line: {cut_recorded:?}"
    );
    for cut in &redone {
        let left = std::process::Command::new("docker")
            .args([
                "ps",
                "-aq",
                "--filter",
                &format!("label=selfagent.session={cut}"),
            ])
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&left.stdout).trim().is_empty(),
            "the cut episode's desktop was left behind"
        );
    }
    // Error bars: three runs a task; each interval holds its rate.
    let summary = |r: &Value, id: &str| -> Value {
        r["summary"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["task_id"] == id)
            .unwrap()
            .clone()
    };
    let width = |s: &Value| s["ci95"][1].as_f64().unwrap() - s["ci95"][0].as_f64().unwrap();
    for (id, rate) in [("rs-pass", 1.0), ("rs-fail", 0.0), ("rs-judged", 0.0)] {
        let s = summary(&r, id);
        assert_eq!(s["pass_rate"].as_f64(), Some(rate), "{s}");
        let (lo, hi) = (
            s["ci95"][0].as_f64().unwrap(),
            s["ci95"][1].as_f64().unwrap(),
        );
        assert!(lo <= rate && rate <= hi, "{s}");
    }
    assert_eq!(r["overall"]["pass_rate"]["tasks"], 3, "{}", r["overall"]);

    // 3. Another batch: one run a task, a model whose judge says yes, and another image
    //    (a tag of the same one).
    let _tag = Tag("selfagent-desktop:compare-b");
    let tagged = std::process::Command::new("docker")
        .args([
            "tag",
            "selfagent-desktop:latest",
            "selfagent-desktop:compare-b",
        ])
        .status()
        .unwrap();
    assert!(tagged.success());
    let server_b = ModelServer::routed(routes(Duration::ZERO, true), (1280, 800)).await;
    let b = home.join("b");
    let out = selfagent(
        &[
            "batch",
            tasks.to_str().unwrap(),
            "--no-snapshot",
            "--image",
            "selfagent-desktop:compare-b",
            "--base-url",
            &server_b.base_url(),
            "--model",
            "scripted",
            "--db",
            db_s,
            "--report",
            b.to_str().unwrap(),
        ],
        home,
    )
    .output()
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let rb = read_json(&b.join("report.json"));
    assert!(
        width(&summary(&r, "rs-pass")) < width(&summary(&rb, "rs-pass")),
        "three runs give a narrower interval than one"
    );

    // 4. compare: the judged task improved, the rest is the same; the images differ.
    let html = home.join("compare.html");
    let out = selfagent(
        &[
            "compare",
            a.to_str().unwrap(),
            b.join("report.json").to_str().unwrap(),
            "--html",
            html.to_str().unwrap(),
        ],
        home,
    )
    .output()
    .await
    .unwrap();
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(0), "{shown}");
    assert!(
        shown.contains(
            "warning: different desktop images: A selfagent-desktop:latest, B selfagent-desktop:compare-b"
        ),
        "{shown}"
    );
    assert!(
        shown.contains("improved (majority verdict flipped): rs-judged"),
        "{shown}"
    );
    assert!(shown.contains("B − A = +33 points"), "{shown}");
    assert!(!shown.contains("regressed"), "{shown}");
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(
        page.contains("<svg") && page.contains("rs-judged"),
        "{page}"
    );
    let out = selfagent(
        &[
            "compare",
            a.to_str().unwrap(),
            b.to_str().unwrap(),
            "--json",
        ],
        home,
    )
    .output()
    .await
    .unwrap();
    let c: Value = serde_json::from_slice(&out.stdout).unwrap();
    let flips: Vec<(&str, &str)> = c["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| Some((t["task_id"].as_str()?, t["flip"].as_str()?)))
        .collect();
    assert_eq!(flips, vec![("rs-judged", "improved")], "{c}");
    let p = &c["pass_rate"];
    assert!(
        (p["diff"].as_f64().unwrap() - 1.0 / 3.0).abs() < 1e-9,
        "{p}"
    );
    assert_eq!(p["tasks"], 3);
    // A report compared with itself: no difference and no warning but its own.
    let out = selfagent(&["compare", a.to_str().unwrap(), a.to_str().unwrap()], home)
        .output()
        .await
        .unwrap();
    let same = text(&out);
    assert!(
        same.contains("B − A = 0 points") && !same.contains("warning"),
        "{same}"
    );
}
