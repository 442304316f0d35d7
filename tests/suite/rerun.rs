//! `selfagent rerun`: a recorded episode done again on a fresh desktop without its model,
//! halting on drift, or handing over to the model (the real binary, real desktops, the
//! scripted model server only where a model is meant to be asked).

use crate::common::model_server::{ModelServer, Reply, answer, call};
use crate::common::screens::terminal_ready;
use crate::common::wait::eventually;
use crate::common::{Guard, SnapshotsOf, bin, cli, stderr, stdout};
use pretty_assertions::assert_eq;
use selfagent::record::Db;
use serde_json::{Value, json};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

const KEY: &str = "sk-selfagent-test-0123456789abcdef";

const TASK: &str = r#"
id = "rerun-terminal"
instruction = "In the open terminal, write rerun-42 into ~/rerun.txt, then move the pointer out of the way."

[limits]
max_steps = 12
timeout = 240

[[setup]]
launch = "terminal"

[[setup]]
wait_for_window = { class = "(?i)xfce4-terminal", timeout = 30 }

[check]
file = "~/rerun.txt"
equals = "rerun-42\n"
"#;

/// The binary with the test's environment: no model endpoint from outside, HOME in `dir`.
fn selfagent(dir: &Path) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(bin());
    c.env_remove("OPENAI_BASE_URL")
        .env_remove("SELFAGENT_CONFIG")
        .env_remove("SELFAGENT_MODEL")
        .env("HOME", dir)
        .stdin(Stdio::null());
    c
}

fn json_lines(out: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect()
}

/// Records the task with the scripted model (a click into the terminal once it shows its
/// prompt, the command typed, a pointer move, the answer); returns the session id.
async fn record(dir: &Path, db: &Path) -> String {
    let server = ModelServer::start(
        vec![
            // Once the terminal shows its prompt, so the recorded screen of every step is a
            // settled one (a re-run waits for the screen each step saw; a terminal caught
            // half-drawn is a screen it never comes back to).
            Reply::When(
                terminal_ready,
                Box::new(call(
                    json!({"action": "left_click", "coordinate": [640, 420]}),
                )),
            ),
            Reply::When(
                terminal_ready,
                Box::new(call(
                    json!({"action": "type", "text": "echo rerun-$((6*7)) > ~/rerun.txt\n"}),
                )),
            ),
            call(json!({"action": "mouse_move", "coordinate": [1100, 700]})),
            answer("rerun-42 is in ~/rerun.txt"),
        ],
        (1280, 800),
    )
    .await;
    let task = dir.join("task.toml");
    std::fs::write(&task, TASK).unwrap();
    let out = selfagent(dir)
        .args([
            "run",
            "--headless",
            "--json",
            "--model",
            "scripted",
            "--base-url",
        ])
        .arg(server.base_url())
        .arg("--db")
        .arg(db)
        .arg("--task")
        .arg(&task)
        .env("OPENAI_API_KEY", KEY)
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "the recorded run: {err}");
    assert_eq!(server.problems(), Vec::<String>::new());
    json_lines(&out.stdout)[0]["session"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn docker(args: &[&str]) -> String {
    let out = std::process::Command::new("docker")
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An object's member names, sorted.
fn sorted_keys(v: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    keys
}

fn rerun_marks(db: &Path, session: &str) -> Vec<String> {
    Db::open(db)
        .unwrap()
        .steps(session)
        .unwrap()
        .iter()
        .map(|s| s.meta["rerun"]["mode"].as_str().unwrap_or("-").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_is_done_again_without_a_model_and_halts_on_drift() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("rec.db");
    let _snapshots = SnapshotsOf(db.clone());
    let original = record(dir.path(), &db).await;

    // The re-run: no model server is running at all.
    let out = selfagent(dir.path())
        .args([
            "rerun",
            &original[..15],
            "--headless",
            "--json",
            "--keep",
            "--db",
        ])
        .arg(&db)
        .output()
        .await
        .unwrap();
    let events = json_lines(&out.stdout);
    let sandbox = events[0]["sandbox"].as_str().unwrap().to_owned();
    let _guard = Guard(sandbox.clone());
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rerun = events[0]["session"].as_str().unwrap().to_owned();
    assert!(events.iter().all(|e| e["type"] != "model_reply"));
    // The same effects on a fresh desktop: the file, and the pointer where it was left.
    let file = docker(&["exec", &sandbox, "cat", "/home/user/rerun.txt"]);
    assert_eq!(file, "rerun-42\n");
    let pointer = docker(&[
        "exec",
        "-u",
        "1000",
        &sandbox,
        "xdotool",
        "getmouselocation",
    ]);
    assert!(pointer.starts_with("x:1100 y:700 "), "{pointer}");
    let r = Db::open(&db).unwrap();
    let s = r.session(&rerun).unwrap();
    assert_eq!(s.meta["rerun_of"], original.as_str());
    assert_eq!(s.meta["source"], "rerun");
    assert_eq!(
        (s.status.as_str(), s.tokens_in, s.tokens_out),
        ("succeeded", 0, 0)
    );
    assert_eq!(s.answer.as_deref(), Some("rerun-42 is in ~/rerun.txt"));
    assert_eq!(r.latest_grade(&rerun).unwrap().unwrap().passed, Some(true));
    // Three steps did something (the model's waits for the prompt are not done again).
    assert_eq!(rerun_marks(&db, &rerun), ["replayed"; 3]);
    let steps = r.steps(&rerun).unwrap();
    for st in &steps {
        eprintln!("re-run step {}: {}", st.idx, st.meta["rerun"]);
    }
    assert_eq!(
        steps[1].actions[0]["action"]["text"],
        "echo rerun-$((6*7)) > ~/rerun.txt\n"
    );
    for st in &steps {
        assert!(st.model_ms.is_none() && st.meta["rerun"]["expected_frame"].is_i64());
        assert!(st.meta["rerun"]["difference"].as_f64().unwrap() <= 0.10);
    }
    drop(r);
    exports_validate(dir.path(), &db, &original, &rerun).await;

    // Drift: a desktop with a maximized window over what the recording saw.
    let up = cli(&["sandbox", "up", "--json", "--ttl", "600"]);
    assert!(up.status.success(), "{}", stderr(&up));
    let id = serde_json::from_str::<Value>(stdout(&up).trim()).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let _drift_guard = Guard(id.clone());
    docker(&[
        "exec",
        "-d",
        "-u",
        "1000",
        &id,
        "xfce4-terminal",
        "--maximize",
        "--title",
        "in-the-way",
    ]);
    eventually("the maximized window", Duration::from_secs(60), || async {
        let list = docker(&["exec", "-u", "1000", &id, "wmctrl", "-l"]);
        if list.contains("in-the-way") {
            Ok(())
        } else {
            Err(list)
        }
    })
    .await;
    let out = selfagent(dir.path())
        .args([
            "rerun",
            &original,
            "--headless",
            "--json",
            "--wait",
            "3",
            "--desktop",
            &id,
            "--db",
        ])
        .arg(&db)
        .output()
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(7),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events = json_lines(&out.stdout);
    let finished = events.iter().find(|e| e["type"] == "finished").unwrap();
    assert_eq!(
        (finished["status"].as_str(), finished["ended_by"].as_str()),
        (Some("failed"), Some("drift"))
    );
    // The step named is the recording's click (after the model's waits for the prompt).
    let click = Db::open(&db)
        .unwrap()
        .steps(&original)
        .unwrap()
        .iter()
        .find(|s| s.actions[0]["action"]["action"] == "click")
        .unwrap()
        .idx;
    let why = finished["error"].as_str().unwrap();
    assert!(
        why.contains(&format!("drift at recorded step {click}:"))
            && why.contains("% of the screen"),
        "{why}"
    );
    assert!(
        events.iter().all(|e| e["type"] != "action_done"),
        "nothing is done after drift"
    );
    let halted = events[0]["session"].as_str().unwrap();
    assert_eq!(rerun_marks(&db, halted), ["halted"]);
    let st = &Db::open(&db).unwrap().steps(halted).unwrap()[0];
    assert!(st.meta["rerun"]["difference"].as_f64().unwrap() > 0.10);
    assert!(st.meta["rerun"]["expected_frame"].is_i64());
    assert!(st.error.as_deref().unwrap_or("").contains("drift"));
    // Nothing was typed: the file is not there.
    let file = docker(&["exec", &id, "sh", "-c", "ls /home/user/rerun.txt 2>&1"]);
    assert!(file.contains("No such file"), "{file}");
    // The HTML export shows where it drifted, with both screens.
    let page = dir.path().join("halted.html");
    let o = selfagent(dir.path())
        .args(["export", halted, "--format", "html", "-o"])
        .arg(&page)
        .arg("--db")
        .arg(&db)
        .output()
        .await
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let page = std::fs::read_to_string(&page).unwrap();
    assert!(page.contains("Re-run: halted") && page.contains("live (drift)"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_drift_the_model_takes_over_and_is_asked_only_then() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("rec.db");
    let _snapshots = SnapshotsOf(db.clone());
    let original = record(dir.path(), &db).await;
    // The recording says the typing step saw another screen (all white) than it will: the
    // click replays, the typing step drifts.
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        let white = image::RgbImage::from_pixel(1280, 800, image::Rgb([255, 255, 255]));
        let mut png = Vec::new();
        image::DynamicImage::ImageRgb8(white)
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        conn.execute(
            "INSERT INTO frames (sha256, width, height, png) VALUES ('white', 1280, 800, ?1)",
            [&png],
        )
        .unwrap();
        let changed = conn
            .execute(
                "UPDATE steps SET frame_before = (SELECT id FROM frames WHERE sha256 = 'white')
                 WHERE session_id = ?1 AND actions LIKE '%\"type\"%'",
                [&original],
            )
            .unwrap();
        assert_eq!(changed, 1);
    }
    let server = ModelServer::start(
        vec![
            call(json!({"action": "type", "text": "echo healed > ~/healed.txt\n"})),
            answer("healed"),
        ],
        (1280, 800),
    )
    .await;
    let out = selfagent(dir.path())
        .args([
            "rerun",
            &original,
            "--headless",
            "--json",
            "--keep",
            "--wait",
            "15",
            "--on-drift",
            "model",
        ])
        .args(["--model", "scripted", "--base-url"])
        .arg(server.base_url())
        .arg("--db")
        .arg(&db)
        .env("OPENAI_API_KEY", KEY)
        .output()
        .await
        .unwrap();
    let events = json_lines(&out.stdout);
    let _guard = Guard(events[0]["sandbox"].as_str().unwrap().to_owned());
    let session = events[0]["session"].as_str().unwrap();
    assert_eq!(server.problems(), Vec::<String>::new());
    assert_eq!(server.remaining(), 0);
    // The model is asked from the drift on, never for the replayed click.
    let replies: Vec<u64> = events
        .iter()
        .filter(|e| e["type"] == "model_reply")
        .map(|e| e["step"].as_u64().unwrap())
        .collect();
    assert_eq!(replies, [2, 3]);
    let first = server.requests()[0].to_string();
    assert!(first.contains("1 of its steps were repeated"), "{first}");
    assert_eq!(rerun_marks(&db, session), ["replayed", "healed", "model"]);
    // The checks grade what the model did too: the file the recording wrote is not there.
    assert_eq!(
        out.status.code(),
        Some(2),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sandbox = events[0]["sandbox"].as_str().unwrap();
    assert_eq!(
        docker(&["exec", sandbox, "cat", "/home/user/healed.txt"]),
        "healed\n"
    );
}

/// The recorded episode and its re-run as trajectories others read: ATIF checked by
/// Harbor's own models, AgentNet and OSWorld field by field against their published shapes.
async fn exports_validate(dir: &Path, db: &Path, original: &str, rerun: &str) {
    let export = |args: Vec<String>| {
        let mut c = selfagent(dir);
        c.arg("export").args(args).arg("--db").arg(db);
        c
    };
    let out_dir = |name: &str| dir.join(name).display().to_string();
    for (session, format, name) in [
        (original, "atif", "atif-model"),
        (rerun, "atif", "atif-rerun"),
        (original, "agentnet", "agentnet"),
        (original, "osworld", "osworld"),
    ] {
        let o = export(vec![
            session.into(),
            "--format".into(),
            format.into(),
            "-o".into(),
            out_dir(name),
        ])
        .output()
        .await
        .unwrap();
        assert!(
            o.status.success(),
            "export {format}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let o = export(vec![
        "--all".into(),
        "--format".into(),
        "atif".into(),
        "--source".into(),
        "rerun".into(),
        "-o".into(),
        out_dir("all"),
    ])
    .output()
    .await
    .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let listed: Vec<String> = std::fs::read_dir(dir.join("all"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        listed,
        [rerun.to_owned()],
        "--source rerun takes the re-run only"
    );

    // ATIF, judged by Harbor's pydantic models and validator (images on disk included).
    let checked = tokio::process::Command::new(crate::common::sdk::python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/atif.py"))
        .arg(dir.join("atif-model/trajectory.json"))
        .arg(dir.join("atif-rerun/trajectory.json"))
        .arg(dir.join("all").join(rerun).join("trajectory.json"))
        .output()
        .await
        .unwrap();
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stderr)
    );
    let reports = json_lines(&checked.stdout);
    for r in &reports {
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["multimodal"], true);
        assert_eq!(r["schema_version"], "ATIF-v1.7");
    }
    // The model decided each recorded step (one call each); the re-run's steps, none.
    let counts = |r: &Value| -> Vec<i64> {
        r["llm_call_counts"].as_array().unwrap()[1..]
            .iter()
            .map(|c| c.as_i64().unwrap())
            .collect()
    };
    assert!(
        counts(&reports[0]).iter().all(|c| *c == 1),
        "{}",
        reports[0]
    );
    assert_eq!(counts(&reports[1]), [0, 0, 0]);

    // AgentNet: the published record's fields (OpenCUA's data README), code in 0-1 units.
    let text = std::fs::read_to_string(dir.join("agentnet/agentnet.jsonl")).unwrap();
    let record: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    for key in [
        "task_id",
        "instruction",
        "task_completed",
        "alignment_score",
        "efficiency_score",
        "task_difficulty",
        "natural_language_task",
        "actual_task",
        "traj",
    ] {
        assert!(record.get(key).is_some(), "AgentNet records have {key}");
    }
    assert_eq!(record["task_id"], "rerun-terminal");
    assert_eq!(record["task_completed"], true);
    let traj = record["traj"].as_array().unwrap();
    assert_eq!(
        sorted_keys(&traj[0]["value"]),
        [
            "action",
            "code",
            "last_step_correct",
            "last_step_redundant",
            "observation",
            "reflection",
            "thought"
        ]
    );
    // The model's waits for the prompt (as many as the desktop took) are AgentNet's
    // `computer.wait()`; the rest is the episode.
    let codes: Vec<&str> = traj
        .iter()
        .map(|s| s["value"]["code"].as_str().unwrap())
        .filter(|c| *c != "computer.wait()")
        .collect();
    assert_eq!(
        codes,
        [
            "pyautogui.click(x=0.5, y=0.525)",
            "pyautogui.write(message='echo rerun-$((6*7)) > ~/rerun.txt\\n')",
            "pyautogui.moveTo(x=0.8594, y=0.875)",
            "computer.terminate(status='success')",
        ]
    );
    for (i, s) in traj.iter().enumerate() {
        assert_eq!(s["index"], i);
        let image = dir
            .join("agentnet/images")
            .join(s["image"].as_str().unwrap());
        assert!(image.exists(), "{}", image.display());
    }

    // OSWorld: its runner's traj.jsonl keys, pyautogui code in pixels, result.txt.
    let lines = json_lines(&std::fs::read(dir.join("osworld/traj.jsonl")).unwrap());
    assert_eq!(
        sorted_keys(&lines[0]),
        [
            "action",
            "action_timestamp",
            "done",
            "info",
            "response",
            "reward",
            "screenshot_file",
            "step_num"
        ]
    );
    let actions: Vec<&str> = lines
        .iter()
        .map(|l| l["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions.iter().find(|a| **a != "WAIT"),
        Some(&"pyautogui.click(x=640, y=420)")
    );
    assert_eq!(actions.last(), Some(&"DONE"));
    assert!(actions.contains(&"pyautogui.moveTo(x=1100, y=700)"));
    assert_eq!(lines.last().unwrap()["reward"], 1.0);
    for l in &lines {
        assert!(
            dir.join("osworld")
                .join(l["screenshot_file"].as_str().unwrap())
                .exists()
        );
    }
    assert_eq!(
        std::fs::read_to_string(dir.join("osworld/result.txt"))
            .unwrap()
            .trim(),
        "1"
    );
}
