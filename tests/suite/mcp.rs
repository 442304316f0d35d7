//! `selfagent mcp` with a client nobody here wrote: the official MCP Python SDK (PyPI
//! `mcp`, tests/mcp/client.py) over stdio and streamable HTTP, against the real binary and
//! real desktops; the recording and Docker are checked from here.

use crate::common::model_server::{ModelServer, Reply, answer, call};
use crate::common::sdk::python;
use crate::common::wait::eventually;
use crate::common::{Guard, bin};
use selfagent::record::Db;
use serde_json::{Value, json};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

/// Runs a scenario of tests/mcp/client.py; returns what it saw (its JSON line).
async fn client(args: &[&str]) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mcp/client.py");
    let run = tokio::process::Command::new(python())
        .arg(script)
        .args(args)
        .env("SELFAGENT_LOG", "info,vnc=off")
        .env_remove("OPENAI_BASE_URL")
        .env_remove("SELFAGENT_CONFIG")
        .env("OPENAI_API_KEY", "sk-selfagent-test-mcp")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(600), run)
        .await
        .expect("the MCP client finished within 10 minutes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "client.py {args:?} failed: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

/// Whether a container (by id or prefix) is gone.
fn gone(id: &str) -> Result<(), String> {
    let out = std::process::Command::new("docker")
        .args(["inspect", "-f", "{{.State.Status}}", id])
        .output()
        .unwrap();
    if out.status.success() {
        Err(format!(
            "{id} is still {}",
            String::from_utf8_lossy(&out.stdout).trim()
        ))
    } else {
        Ok(())
    }
}

/// The containers of a recorded session.
fn containers_of(session: &str) -> String {
    let out = std::process::Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=selfagent.session={session}"),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test]
async fn an_mcp_host_drives_a_desktop_over_stdio_and_every_call_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("rec.db");
    let seen = client(&["stdio", bin(), db.to_str().unwrap()]).await;
    let sid = seen["sandbox"].as_str().unwrap().to_owned();
    let _guard = Guard(sid.clone());

    assert_eq!(
        seen["tools"],
        json!([
            "computer",
            "exec",
            "read_file",
            "run_task",
            "sandbox_down",
            "sandbox_list",
            "sandbox_up",
            "screenshot",
            "wait_window",
            "windows",
            "write_file"
        ])
    );
    assert_eq!(seen["schemas_described"], true, "every input is described");
    assert_eq!(
        (seen["up"]["width"].clone(), seen["up"]["height"].clone()),
        (json!(1280), json!(800))
    );
    assert!(
        seen["up"]["view_url"]
            .as_str()
            .unwrap()
            .starts_with("http://127.0.0.1:")
    );
    assert!(seen["up"]["view_only_url"].as_str().is_some());
    // The screenshot is a PNG of the screen's size; scaled, of half of it, and says so.
    assert_eq!(seen["screenshot"], json!([1280, 800]));
    assert_eq!(seen["screenshot_half"], json!([640, 400]));
    assert!(
        seen["screenshot_half_text"]
            .as_str()
            .unwrap()
            .contains("scaled by 0.5")
    );
    assert_eq!(seen["enter_image"], json!([1280, 800]));
    // Keys typed through `computer` reached the terminal's shell.
    assert_eq!(seen["exec"]["stdout"], "typed-through-mcp\n");
    assert_eq!(seen["read_file"], "typed-through-mcp\n");
    assert_eq!(seen["write_file"], "héllo\nuser\n");
    // A command that fails is a result, not a tool error.
    assert_eq!(seen["exec_failing"]["is_error"], false);
    assert_eq!(seen["exec_failing"]["exit_code"], 3);
    assert_eq!(seen["exec_failing"]["stderr"], "oops\n");
    assert_eq!(seen["click"]["is_error"], false, "{}", seen["click"]);
    assert_eq!(
        seen["click"]["action"]["action"], "click",
        "{}",
        seen["click"]
    );

    // Mistakes are tool errors with the reason.
    let errors = &seen["errors"];
    for (name, says) in [
        ("unknown_action", "fly"),
        ("off_screen", "outside the 1280x800 screen"),
        ("unknown_key", "notakey"),
        ("unknown_sandbox", "no-such-desktop"),
        // The schema names the actions: `done` (an episode's end) is none of them.
        ("ends_episode", "expected one of"),
        ("device", "/dev/zero"),
        ("too_big", "1000"),
        ("bad_scale", "scale"),
        ("unknown_tool", "teleport"),
    ] {
        assert_eq!(errors[name]["is_error"], true, "{name}: {}", errors[name]);
        let text = errors[name]["text"].as_str().unwrap();
        assert!(text.contains(says), "{name}: '{text}' should say '{says}'");
    }
    // ... and the server went on serving.
    assert_eq!(seen["list_after_errors"], json!([sid]));
    assert!(
        seen["windows"].as_array().unwrap().iter().any(|c| c
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("term")),
        "{}",
        seen["windows"]
    );

    // The recording, through MCP's resources and in the file.
    assert_eq!(seen["session"]["source"], "mcp");
    let steps = seen["session"]["steps"].as_array().unwrap();
    let kinds: Vec<&str> = steps
        .iter()
        .map(|s| {
            s["actions"][0]["action"]["action"]
                .as_str()
                .unwrap_or("failed")
        })
        .collect();
    assert_eq!(kinds[..3], ["launch", "type", "key"], "{kinds:?}");
    assert!(kinds.contains(&"click"), "{kinds:?}");
    assert!(
        steps
            .iter()
            .all(|s| s["before"].as_str().is_some() && s["after"].as_str().is_some())
    );
    assert_eq!(seen["frame"], json!([1280, 800]));
    let session = seen["up"]["session"].as_str().unwrap();
    assert!(
        seen["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == session && s["source"] == "mcp")
    );

    // The client closed its end: the desktop is removed, the session ended.
    eventually(
        "the desktop removed after the session",
        Duration::from_secs(60),
        || async { gone(&sid) },
    )
    .await;
    let rec = Db::open_read(&db).unwrap();
    let row = rec.session(session).unwrap();
    assert_eq!(row.status, "stopped");
    assert_eq!(row.meta["ended_by"], "host");
    assert_eq!(row.meta["source"], "mcp");
    assert_eq!(row.instruction, "type into a terminal");
    // Every computer call is a step, the failed ones too (off-screen, unknown key).
    let recorded = rec.steps(session).unwrap();
    assert_eq!(recorded.len(), steps.len());
    assert!(recorded.len() >= 6, "{} steps", recorded.len());
    for says in ["outside", "notakey"] {
        assert!(
            recorded
                .iter()
                .any(|s| s.error.as_deref().is_some_and(|e| e.contains(says))),
            "no recorded step failed with '{says}'"
        );
    }
}

/// `selfagent mcp --http 127.0.0.1:0 --json`: the server and its URL and token.
struct HttpServer {
    child: tokio::process::Child,
    url: String,
    token: String,
}

impl HttpServer {
    async fn start(db: &Path) -> Self {
        let mut child = tokio::process::Command::new(bin())
            .args([
                "mcp",
                "--http",
                "127.0.0.1:0",
                "--json",
                "--db",
                db.to_str().unwrap(),
            ])
            .env("SELFAGENT_LOG", "info,vnc=off")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("the server printed its URL")
            .unwrap()
            .expect("a line");
        let v: Value = serde_json::from_str(&first).unwrap();
        Self {
            child,
            url: v["url"].as_str().unwrap().to_owned(),
            token: v["token"].as_str().unwrap().to_owned(),
        }
    }

    /// SIGTERM, then its exit status.
    async fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().unwrap().to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("the server stopped within a minute")
            .unwrap()
    }
}

#[tokio::test]
async fn over_http_the_token_is_needed_and_an_ended_session_takes_its_desktop() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("rec.db");
    let server = HttpServer::start(&db).await;
    assert_eq!(server.token.len(), 64);

    let refused = client(&["refused", &server.url]).await;
    for case in ["none", "wrong", "not_bearer"] {
        assert_eq!(refused[case]["status"], 401, "{case}: {refused}");
        assert_eq!(
            refused[case]["www_authenticate"], "Bearer",
            "{case}: {refused}"
        );
    }

    let seen = client(&["http", &server.url, &server.token]).await;
    let sid = seen["up"]["sandbox"].as_str().unwrap().to_owned();
    let _guard = Guard(sid.clone());
    assert_eq!(seen["screenshot"], json!([1024, 768]));
    assert_eq!(seen["key"]["is_error"], false, "{seen}");
    assert!(seen["down"].as_str().unwrap().contains("removed"), "{seen}");
    assert_eq!(seen["after_down"]["is_error"], true);
    eventually(
        "the desktop removed by sandbox_down",
        Duration::from_secs(30),
        || async { gone(&sid) },
    )
    .await;
    let rec = Db::open_read(&db).unwrap();
    let row = rec
        .session(seen["up"]["session"].as_str().unwrap())
        .unwrap();
    assert_eq!(row.status, "succeeded");
    assert_eq!(row.answer.as_deref(), Some("done over http"));

    // An HTTP session of the initialize handshake: when the client ends it, its desktop goes.
    let legacy = client(&["legacy", &server.url, &server.token]).await;
    assert_ne!(legacy["protocol_version"], "2026-07-28", "{legacy}");
    let sid = legacy["sandbox"].as_str().unwrap().to_owned();
    let _guard = Guard(sid.clone());
    eventually(
        "the desktop of the ended HTTP session removed",
        Duration::from_secs(60),
        || async { gone(&sid) },
    )
    .await;

    let status = server.stop().await;
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn run_task_reports_each_step_and_a_cancelled_call_stops_the_episode() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("rec.db");
    let mut script: Vec<Reply> = (0..3)
        .map(|i| call(json!({"action": "mouse_move", "coordinate": [100 + 100 * i, 300]})))
        .collect();
    script.push(answer("moved three times"));
    let model = ModelServer::start(script, (1280, 800)).await;
    let seen = client(&["run_task", bin(), db.to_str().unwrap(), &model.base_url()]).await;
    assert_eq!(seen["is_error"], false, "{seen}");
    let result = &seen["result"];
    assert_eq!(result["status"], "succeeded", "{seen}");
    assert_eq!(result["answer"], "moved three times");
    assert_eq!(result["steps"], 4);
    let progress = seen["progress"].as_array().unwrap();
    assert!(progress.len() >= 3, "{progress:?}");
    for (i, p) in progress.iter().enumerate() {
        assert_eq!(p["progress"], json!((i + 1) as f64), "{progress:?}");
        assert_eq!(p["total"], json!(10.0));
    }
    assert!(
        progress[0]["message"]
            .as_str()
            .unwrap()
            .contains("mouse_move"),
        "{progress:?}"
    );
    assert!(model.problems().is_empty(), "{:?}", model.problems());
    // The episode's fresh desktop is not the server's to hold, and is gone.
    assert_eq!(seen["held_after"], json!([]));
    let session = result["session"].as_str().unwrap();
    assert_eq!(containers_of(session), "");
    let rec = Db::open_read(&db).unwrap();
    assert_eq!(rec.steps(session).unwrap().len(), 4);

    // Cancelled after its first step: the episode stops, its desktop goes.
    let slow: Vec<Reply> = (0..40)
        .map(|i| {
            Reply::Slow(
                Duration::from_millis(300),
                Box::new(call(
                    json!({"action": "mouse_move", "coordinate": [200 + 10 * i, 400]}),
                )),
            )
        })
        .collect();
    let model = ModelServer::start(slow, (1280, 800)).await;
    let db2 = dir.path().join("cancel.db");
    let seen = client(&["cancel", bin(), db2.to_str().unwrap(), &model.base_url()]).await;
    assert_eq!(seen["still_serving"], true, "{seen}");
    let sessions = seen["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 1, "{seen}");
    assert_eq!(sessions[0]["status"], "stopped", "{seen}");
    let steps = sessions[0]["steps"].as_i64().unwrap();
    assert!((1..20).contains(&steps), "stopped after {steps} steps");
    assert!(
        model.remaining() >= 20,
        "{} replies left",
        model.remaining()
    );
    let session = sessions[0]["id"].as_str().unwrap();
    eventually(
        "the cancelled episode's desktop removed",
        Duration::from_secs(60),
        || async {
            match containers_of(session) {
                s if s.is_empty() => Ok(()),
                s => Err(s),
            }
        },
    )
    .await;
}

#[tokio::test]
async fn the_limit_holds_idle_desktops_go_and_a_dead_one_is_a_tool_error() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("rec.db");
    let seen = client(&["limits", bin(), db.to_str().unwrap()]).await;
    let first = seen["first"].as_str().unwrap().to_owned();
    let third = seen["third"].as_str().unwrap().to_owned();
    let (_g1, _g3) = (Guard(first.clone()), Guard(third.clone()));
    // One desktop at most: the second is refused, saying why.
    assert_eq!(seen["second"]["is_error"], true, "{seen}");
    assert!(
        seen["second"]["text"]
            .as_str()
            .unwrap()
            .contains("--max-desktops 1"),
        "{seen}"
    );
    // Unused past --idle-timeout, the first went, and its place with it.
    assert_eq!(seen["listed_after_idle"], json!([]), "{seen}");
    gone(&first).unwrap();
    // A desktop that died is a tool error, and is let go.
    assert_eq!(seen["dead"]["is_error"], true, "{seen}");
    assert!(
        seen["dead"]["text"].as_str().unwrap().contains("is gone"),
        "{seen}"
    );
    assert_eq!(seen["listed_after_death"], json!([]), "{seen}");
    let rec = Db::open_read(&db).unwrap();
    let sessions = rec.sessions(10).unwrap();
    let of = |sid: &str| {
        sessions
            .iter()
            .find(|s| s.sandbox.as_deref().is_some_and(|x| x.starts_with(sid)))
            .unwrap()
    };
    assert_eq!(of(&first).status, "stopped");
    assert_eq!(
        of(&first).error.as_deref(),
        Some("released after the idle timeout")
    );
    assert_eq!(of(&third).status, "error");
}
