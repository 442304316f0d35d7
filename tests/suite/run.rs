//! `selfagent run --headless`: the real binary, a real desktop, the scripted model server.

use crate::common::model_server::{
    ModelServer, Reply, answer, call, call_lenient, calls, completion,
};
use crate::common::screens::terminal_ready;
use crate::common::wait::{check, eventually};
use crate::common::{Guard, bin, cli, decode_png, stderr, stdout};
use pretty_assertions::assert_eq;
use selfagent::record::Db;
use serde_json::{Value, json};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

const KEY: &str = "sk-selfagent-test-0123456789abcdef";

/// Runs `selfagent run --headless --json` against `server`; returns the exit code, the
/// JSON events and stderr. The desktop is kept (removed by the returned guard) so tests
/// can look inside it.
async fn run(
    server: &ModelServer,
    db: &Path,
    extra: &[&str],
    task: &str,
) -> (Option<i32>, Vec<Value>, String, Option<Guard>) {
    let mut args = vec![
        "run".to_owned(),
        "--headless".into(),
        "--json".into(),
        "--keep".into(),
        "--base-url".into(),
        server.base_url(),
        "--model".into(),
        "scripted".into(),
        "--db".into(),
        db.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args.push(task.to_owned());
    let out = tokio::process::Command::new(bin())
        .args(&args)
        .env("OPENAI_API_KEY", KEY)
        .env_remove("OPENAI_BASE_URL")
        .env_remove("SELFAGENT_CONFIG")
        .env("HOME", db.parent().unwrap())
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let events: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    let guard = events
        .iter()
        .find_map(|e| e["sandbox"].as_str())
        .map(|s| Guard(s.to_owned()));
    (
        out.status.code(),
        events,
        String::from_utf8_lossy(&out.stderr).into_owned(),
        guard,
    )
}

type EventLines = tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>;

/// Starts `selfagent run --headless --json` in the background (an owned desktop: removed
/// on a clean exit, orphaned on a kill); returns the child and its stream of JSON lines.
fn spawn_run(
    server: &ModelServer,
    dir: &Path,
    db: &Path,
    task: &str,
) -> (tokio::process::Child, EventLines) {
    let mut child = tokio::process::Command::new(bin())
        .args([
            "run",
            "--headless",
            "--json",
            "--base-url",
            &server.base_url(),
            "--db",
            db.to_str().unwrap(),
            task,
        ])
        .env("OPENAI_API_KEY", KEY)
        .env_remove("SELFAGENT_CONFIG")
        .env("HOME", dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(child.stdout.take().unwrap()));
    (child, lines)
}

fn of_type<'a>(events: &'a [Value], t: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == t).collect()
}

fn file_bytes_without(dir: &Path, needle: &str) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "{} holds a secret",
            path.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_headless_run_does_the_task_and_records_every_step() {
    let server = ModelServer::start(
        vec![
            call(json!({"action": "key", "text": "ctrl+alt+t"})),
            // Typed once the terminal shows its prompt (waits until then are extra steps).
            Reply::When(
                terminal_ready,
                Box::new(call(
                    json!({"action": "type", "text": "echo hello-from-the-agent > /tmp/agent.txt\n"}),
                )),
            ),
            answer("I wrote hello-from-the-agent to /tmp/agent.txt."),
        ],
        (1280, 800),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("rec.db");
    let (code, events, err, guard) = run(
        &server,
        &db_path,
        &[],
        "write hello-from-the-agent into /tmp/agent.txt",
    )
    .await;
    let _guard = guard.expect("the events name the sandbox");
    assert_eq!(code, Some(0), "stderr: {err}");
    assert_eq!(server.problems(), Vec::<String>::new());
    assert_eq!(server.remaining(), 0);
    // Three scripted steps, and the waits for the terminal before the second.
    let waits = server.waits();
    let n = 3 + waits;
    assert!(
        server
            .auth()
            .iter()
            .all(|a| a.as_deref() == Some(&format!("Bearer {KEY}")[..]))
    );

    // Every JSON line names the session and the sandbox.
    let session = events[0]["session"].as_str().unwrap().to_owned();
    let sandbox = events[0]["sandbox"].as_str().unwrap().to_owned();
    assert!(
        events
            .iter()
            .all(|e| e["session"] == session.as_str() && e["sandbox"] == sandbox.as_str())
    );
    assert_eq!(of_type(&events, "step_finished").len(), n);
    let finished = of_type(&events, "finished");
    assert_eq!(finished[0]["status"], "succeeded");

    // The effect, inside the container.
    let out = std::process::Command::new("docker")
        .args(["exec", &sandbox, "cat", "/tmp/agent.txt"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello-from-the-agent\n"
    );

    // The recording.
    let db = Db::open(&db_path).unwrap();
    let s = db.session(&session).unwrap();
    assert_eq!(
        (s.status.as_str(), s.steps, s.tokens_in, s.tokens_out),
        ("succeeded", n as i64, 100 * n as i64, 10 * n as i64)
    );
    assert_eq!(s.sandbox.as_deref(), Some(sandbox.as_str()));
    assert_eq!(
        s.answer.as_deref(),
        Some("I wrote hello-from-the-agent to /tmp/agent.txt.")
    );
    let steps = db.steps(&session).unwrap();
    assert_eq!(
        steps.iter().map(|s| s.idx).collect::<Vec<_>>(),
        (1..=n as i64).collect::<Vec<_>>()
    );
    for st in &steps {
        let frame = db.frame(st.frame_after.unwrap()).unwrap().unwrap();
        assert_eq!(decode_png(&frame.png).dimensions(), (1280, 800));
        assert!(st.model_ms.is_some());
    }
    assert_eq!(
        steps[0].actions[0]["action"],
        json!({"action": "key", "text": "ctrl+alt+t"})
    );
    let typed = &steps[1 + waits];
    assert_eq!(typed.actions[0]["action"]["action"], "type");
    // The request is stored with frame references instead of pixels.
    let (request, response) = db.exchange(&session, typed.idx).unwrap();
    let request = request.to_string();
    assert!(
        request.contains("\"frame:") && !request.contains("base64"),
        "{request:.300}"
    );
    assert_eq!(
        response["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
        "computer"
    );
    // The terminal is on the screen when the text is typed.
    let after_wait = decode_png(&db.frame(typed.frame_before.unwrap()).unwrap().unwrap().png);
    let before = decode_png(
        &db.frame(steps[0].frame_before.unwrap())
            .unwrap()
            .unwrap()
            .png,
    );
    let changed = before
        .pixels()
        .zip(after_wait.pixels())
        .filter(|(a, b)| a != b)
        .count();
    assert!(
        changed > 10_000,
        "the terminal did not show up ({changed} pixels changed)"
    );
    drop(db);

    // No secret reached the recording: not the API key, not the desktop's credentials.
    file_bytes_without(dir.path(), KEY);
    let env = std::process::Command::new("docker")
        .args([
            "inspect",
            "-f",
            "{{range .Config.Env}}{{println .}}{{end}}",
            &sandbox,
        ])
        .output()
        .unwrap();
    for line in String::from_utf8_lossy(&env.stdout).lines() {
        if let Some((k, v)) = line.split_once('=')
            && k.starts_with("SELFAGENT_")
            && (k.ends_with("PASSWORD") || k.ends_with("COOKIE") || k.ends_with("TOKEN"))
        {
            file_bytes_without(dir.path(), v);
        }
    }

    // The sessions commands read it back.
    let db_arg = db_path.display().to_string();
    let out = cli(&["sessions", "ls", "--json", "--db", &db_arg]);
    let list: Vec<Value> = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(list[0]["id"], session.as_str());
    let out = cli(&["sessions", "show", &session[..15], "--db", &db_arg]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("succeeded") && stdout(&out).contains("ctrl+alt+t"),
        "{}",
        stdout(&out)
    );
    let png = dir.path().join("step3.png");
    let out = cli(&[
        "sessions",
        "frame",
        &session,
        &typed.idx.to_string(),
        "-o",
        png.to_str().unwrap(),
        "--db",
        &db_arg,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        decode_png(&std::fs::read(&png).unwrap()).dimensions(),
        (1280, 800)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_are_retried_or_fed_back_and_the_episode_still_completes() {
    let broken_args = Reply::Json(completion(json!({"role": "assistant", "tool_calls": [
        {"id": "b", "type": "function", "function": {"name": "computer", "arguments": "{\"action\": left_cl"}}]})));
    let server = ModelServer::start(
        vec![
            Reply::Status {
                code: 500,
                body: "upstream exploded".into(),
                retry_after: None,
            },
            call(json!({"action": "key", "text": "ctrl+alt+t"})),
            Reply::Status {
                code: 429,
                body: "{\"error\":{\"message\":\"slow down\"}}".into(),
                retry_after: Some(1),
            },
            call_lenient(json!({"action": "wait", "duration": 0.5})),
            // Too slow for --model-timeout 2: abandoned and retried.
            Reply::Slow(Duration::from_secs(5), Box::new(answer("too late"))),
            Reply::Garbage("{\"choices\": [".into()),
            call(json!({"action": "key", "text": "ctrl+Bogus"})),
            Reply::When(
                terminal_ready,
                Box::new(call(
                    json!({"action": "type", "text": "echo recovered > /tmp/faults.txt\n"}),
                )),
            ),
            call(json!({"action": "left_click", "coordinate": [5000, 10]})),
            call(json!({"action": "mouse_move", "coordinate": [640, 400]})),
            broken_args,
            calls(vec![
                json!({"action": "mouse_move", "coordinate": [10, 10]}),
                json!({"action": "cursor_position"}),
            ]),
            answer("recovered"),
        ],
        (1280, 800),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("rec.db");
    let (code, events, err, guard) = run(
        &server,
        &db_path,
        &["--model-timeout", "2"],
        "survive the faults",
    )
    .await;
    let _guard = guard;
    assert_eq!(code, Some(0), "stderr: {err}");
    assert_eq!(server.problems(), Vec::<String>::new());
    let retries = of_type(&events, "model_retry");
    assert_eq!(retries.len(), 4, "{retries:?}");
    assert!(retries[0]["error"].as_str().unwrap().contains("HTTP 500"));
    assert!(retries[1]["error"].as_str().unwrap().contains("HTTP 429"));
    assert_eq!(retries[1]["wait_ms"], 1000, "Retry-After was not honoured");
    assert!(retries[2]["error"].as_str().unwrap().contains("timed out"));
    assert!(retries[3]["error"].as_str().unwrap().contains("not JSON"));

    // Each mistake went back to the model in the next request's tool message.
    let requests = server.requests();
    let tool_texts = |r: &Value| -> String {
        r["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["role"] == "tool")
            .filter_map(|m| m["content"].as_str())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let all: String = requests
        .iter()
        .map(tool_texts)
        .collect::<Vec<_>>()
        .join("\n");
    for needle in [
        "unknown key 'Bogus'",
        "outside the 1280x800 screen",
        "not valid JSON",
        "X=10,Y=10",
    ] {
        assert!(all.contains(needle), "the model never heard: {needle}");
    }

    // And everything is in the recording.
    let db = Db::open(&db_path).unwrap();
    let session = events[0]["session"].as_str().unwrap();
    let s = db.session(session).unwrap();
    assert_eq!(s.status, "succeeded");
    let steps = db.steps(session).unwrap();
    let errors: Vec<String> = steps.iter().filter_map(|s| s.error.clone()).collect();
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(
        errors[0].contains("unknown key")
            && errors[1].contains("outside")
            && errors[2].contains("not valid JSON")
    );
    let retried: usize = steps
        .iter()
        .map(|s| s.meta["retries"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(retried, 4);
    assert_eq!(
        steps[1].thought.as_deref(),
        Some("thinking in the other field")
    );
    let out = std::process::Command::new("docker")
        .args([
            "exec",
            events[0]["sandbox"].as_str().unwrap(),
            "cat",
            "/tmp/faults.txt",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "recovered\n");
    file_bytes_without(dir.path(), KEY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_keeps_committed_steps_and_the_session_becomes_interrupted() {
    let mut script = Vec::new();
    for i in 0..30 {
        script.push(Reply::Slow(
            Duration::from_millis(400),
            Box::new(call(
                json!({"action": "mouse_move", "coordinate": [100 + i * 10, 300]}),
            )),
        ));
    }
    let server = ModelServer::start(script, (1280, 800)).await;
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("rec.db");
    // Owned desktop (no --keep): prune must find it orphaned after the kill.
    let (mut child, mut lines) = spawn_run(&server, dir.path(), &db_path, "move around");
    let pid = child.id().unwrap();
    let first: Value = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
    let session = first["session"].as_str().unwrap().to_owned();
    let sandbox = first["sandbox"].as_str().unwrap().to_owned();
    let _guard = Guard(sandbox.clone());
    // Wait for some steps to be committed.
    eventually("three recorded steps", Duration::from_secs(60), || {
        let steps = Db::open(&db_path)
            .ok()
            .and_then(|db| db.steps(&session).ok())
            .map_or(0, |s| s.len());
        async move { check(steps >= 3, || format!("{steps} steps")) }
    })
    .await;
    assert!(
        std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    let _ = child.wait().await;

    let db = Db::open(&db_path).unwrap();
    let s = db.session(&session).unwrap();
    assert_eq!(s.status, "interrupted");
    let steps = db.steps(&session).unwrap();
    assert!(
        steps.len() >= 3 && s.steps as usize == steps.len(),
        "{} steps, session says {}",
        steps.len(),
        s.steps
    );
    for st in &steps {
        assert!(db.frame(st.frame_after.unwrap()).unwrap().is_some());
        assert_eq!(st.actions[0]["ok"], true);
    }
    drop(db);

    // Its desktop is orphaned now, and prune removes it.
    let out = cli(&["sandbox", "prune", "--json"]);
    let report: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    let pruned = report["removed"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == sandbox.as_str())
        .cloned();
    assert_eq!(
        pruned.map(|p| p["reason"].clone()),
        Some(json!("its selfagent process is gone"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("rec.db");
    // An unreachable model: found before any desktop starts, said plainly, with the fix.
    let started = Instant::now();
    let out = tokio::process::Command::new(bin())
        .args([
            "run",
            "--headless",
            "--base-url",
            "http://127.0.0.1:9/v1",
            "--max-retries",
            "1",
            "--db",
            db_path.to_str().unwrap(),
            "anything",
        ])
        .env_remove("SELFAGENT_CONFIG")
        .env("HOME", dir.path())
        .output()
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("cannot reach the model server at http://127.0.0.1:9/v1: Connection refused"),
        "{text}"
    );
    assert!(text.contains("fix: is the server running"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "it started a desktop first"
    );
    let db = Db::open(&db_path).unwrap();
    assert!(
        db.sessions(1).unwrap().is_empty(),
        "nothing ran, nothing is recorded"
    );

    // No endpoint at all.
    let out = tokio::process::Command::new(bin())
        .args(["run", "--headless", "task"])
        .env_remove("OPENAI_BASE_URL")
        .env_remove("SELFAGENT_CONFIG")
        .env("HOME", dir.path())
        .output()
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("no model endpoint"));

    // A corrupt recording: refused before any desktop starts, and left as it was.
    let bad = dir.path().join("bad.db");
    std::fs::write(&bad, b"not a database").unwrap();
    let started = Instant::now();
    let out = tokio::process::Command::new(bin())
        .args([
            "run",
            "--headless",
            "--base-url",
            "http://127.0.0.1:9/v1",
            "--db",
            bad.to_str().unwrap(),
            "task",
        ])
        .env_remove("SELFAGENT_CONFIG")
        .env("HOME", dir.path())
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a usable selfagent recording"));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "it started a desktop first"
    );
    assert_eq!(std::fs::read(&bad).unwrap(), b"not a database");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_stops_cleanly_and_removes_the_desktop() {
    // SIGINT (Ctrl-C), SIGTERM (a service manager, `kill`) and SIGHUP (a closed terminal)
    // all stop the same way.
    for signal in ["INT", "TERM", "HUP"] {
        let script = (0..30)
            .map(|i| {
                Reply::Slow(
                    Duration::from_millis(300),
                    Box::new(call(
                        json!({"action": "mouse_move", "coordinate": [200 + i * 5, 200]}),
                    )),
                )
            })
            .collect();
        let server = ModelServer::start(script, (1280, 800)).await;
        let dir = tempfile::tempdir().unwrap();
        let db_path = dir.path().join("rec.db");
        let (mut child, mut lines) = spawn_run(&server, dir.path(), &db_path, "move around");
        let pid = child.id().unwrap();
        let mut sandbox = String::new();
        let mut finished = 0;
        while let Some(line) = lines.next_line().await.unwrap() {
            let v: Value = serde_json::from_str(&line).unwrap();
            sandbox = v["sandbox"].as_str().unwrap().to_owned();
            if v["type"] == "step_finished" {
                finished += 1;
                if finished == 2 {
                    assert!(
                        std::process::Command::new("kill")
                            .args([&format!("-{signal}"), &pid.to_string()])
                            .status()
                            .unwrap()
                            .success()
                    );
                }
            }
        }
        let _guard = Guard(sandbox.clone());
        let status = child.wait().await.unwrap();
        assert_eq!(status.code(), Some(130), "SIG{signal}");
        let db = Db::open(&db_path).unwrap();
        let s = &db.sessions(1).unwrap()[0];
        assert_eq!(s.status, "stopped", "SIG{signal}");
        assert!(s.steps >= 2 && db.steps(&s.id).unwrap().len() as i64 == s.steps);
        // The desktop was removed on the way out.
        let out = std::process::Command::new("docker")
            .args(["ps", "-aq", "--no-trunc"])
            .output()
            .unwrap();
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains(&sandbox),
            "SIG{signal}: the desktop is still there"
        );
    }
}

/// `--max-cost`: the episode stops before the model call after the limit was spent
/// (stopped, by budget, exit 3), and the cost is in the events, the recording and
/// `sessions show`. The price comes from the config file's `[prices]`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cost_limit_stops_the_episode_and_the_cost_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("rec.db");
    let config = dir.path().join("config.toml");
    // Each scripted reply is 100 tokens in and 10 out: $0.002 a step at these prices.
    std::fs::write(&config, "[prices.scripted]\ninput = 10.0\noutput = 100.0\n").unwrap();
    let wait = || call(json!({"action": "wait", "duration": 0.1}));
    let server = ModelServer::start((0..6).map(|_| wait()).collect(), (1280, 800)).await;
    let (code, events, err, _guard) = run(
        &server,
        &db,
        &["--config", config.to_str().unwrap(), "--max-cost", "0.005"],
        "wait a bit",
    )
    .await;
    assert_eq!(code, Some(3), "{err}");
    let end = events.iter().find(|e| e["type"] == "finished").unwrap();
    assert_eq!(end["status"], "stopped", "{end}");
    assert_eq!(end["ended_by"], "budget", "{end}");
    assert_eq!(
        end["steps"], 3,
        "three steps cost $0.006, over $0.005: {end}"
    );
    assert!(
        (end["cost"].as_f64().unwrap() - 0.006).abs() < 1e-9,
        "{end}"
    );
    assert!(
        end["error"]
            .as_str()
            .unwrap()
            .contains("the cost limit ($0.005) was reached: $0.006 spent"),
        "{end}"
    );
    let session = events[0]["session"].as_str().unwrap().to_owned();
    let out = cli(&["sessions", "show", &session, "--db", db.to_str().unwrap()]);
    assert!(
        stdout(&out).contains("cost      $0.006 ($10/$100 per million tokens in/out, config)"),
        "{}",
        stdout(&out)
    );
    // Without a price, a cost limit cannot be kept: refused before anything starts.
    let out = cli(&[
        "run",
        "--headless",
        "--base-url",
        &server.base_url(),
        "--model",
        "nobody-prices-this",
        "--max-cost",
        "1",
        "--db",
        db.to_str().unwrap(),
        "x",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("--max-cost needs the price of nobody-prices-this"),
        "{}",
        stderr(&out)
    );
}

/// A chat-completions reply that says what it is about to do, then does it.
fn said_and_done(thought: &str, args: Value) -> Reply {
    Reply::Json(completion(json!({
        "role": "assistant",
        "content": thought,
        "tool_calls": [{"id": "call_0", "type": "function",
            "function": {"name": "computer", "arguments": args.to_string()}}]
    })))
}

const DEMO_TASK: &str = r#"id = "demo-hello"
instruction = "(A scripted demo: the replies come from selfagent's test model server, not from a real model.) Open a terminal, write the line 'Hello from selfagent' into ~/hello.txt and show it."
tags = ["demo"]

[limits]
max_steps = 8
timeout = 120

[check]
all = [
  { file = "~/hello.txt", equals = "Hello from selfagent\n" },
]
"#;

/// Makes `recordings/demo.db`, the recording `selfagent replay recordings/demo.db` shows a
/// newcomer: the scripted model against a real desktop, graded. Run by hand after a change
/// that the shipped file should show:
/// `cargo nextest run --run-ignored only -E 'test(make_the_demo_recording)'`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes recordings/demo.db; run by hand"]
async fn make_the_demo_recording() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let db = root.join("recordings/demo.db");
    let _ = std::fs::remove_file(&db);
    let dir = tempfile::tempdir().unwrap();
    let task = dir.path().join("demo.toml");
    std::fs::write(&task, DEMO_TASK).unwrap();
    let server = ModelServer::start(
        vec![
            said_and_done(
                "The desktop is empty. I will open a terminal with its shortcut.",
                json!({"action": "key", "text": "ctrl+alt+t"}),
            ),
            Reply::When(
                terminal_ready,
                Box::new(said_and_done(
                    "The terminal is open. I will write the line and print the file.",
                    json!({"action": "type", "text": "echo 'Hello from selfagent' > ~/hello.txt && cat ~/hello.txt\n"}),
                )),
            ),
            answer("Done: ~/hello.txt holds 'Hello from selfagent', as the terminal shows."),
        ],
        (1280, 800),
    )
    .await;
    let out = tokio::process::Command::new(bin())
        .args(["run", "--headless", "--no-snapshot", "--base-url"])
        .arg(server.base_url())
        .args(["--model", "scripted", "--task"])
        .arg(&task)
        .arg("--db")
        .arg(&db)
        .env_remove("SELFAGENT_CONFIG")
        .env("HOME", dir.path())
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// The shipped demo recording opens with this version and shows a graded, scripted run.
#[test]
fn the_shipped_demo_recording_replays() {
    let db = Path::new(env!("CARGO_MANIFEST_DIR")).join("recordings/demo.db");
    let rec = Db::open_read(&db).unwrap();
    let sessions = rec.sessions(10).unwrap();
    assert_eq!(sessions.len(), 1);
    let s = &sessions[0];
    assert_eq!(s.status, "succeeded");
    assert!(
        s.instruction.contains("A scripted demo"),
        "{}",
        s.instruction
    );
    let steps = rec.steps(&s.id).unwrap();
    assert!(steps.len() >= 3, "{} steps", steps.len());
    for st in &steps {
        let id = st.frame_after.expect("a screenshot after each step");
        assert!(rec.frame(id).unwrap().is_some());
    }
    let grade = rec.latest_grade(&s.id).unwrap().expect("graded");
    assert_eq!(grade.passed, Some(true));
    let out = cli(&["sessions", "show", &s.id, "--db", db.to_str().unwrap()]);
    assert!(
        stdout(&out).contains("Hello from selfagent"),
        "{}",
        stdout(&out)
    );
}
