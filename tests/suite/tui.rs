//! The terminal UI, driven through tmux (send-keys, capture-pane): the real binary, a real
//! desktop, the scripted model server.

use crate::common::model_server::{ModelServer, Reply, call};
use crate::common::tmux::Tmux;
use crate::common::wait::{check, eventually, never};
use crate::common::{Guard, bin};
use selfagent::record::Db;
use serde_json::json;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The number of steps the timeline title shows (`timeline · 7 steps`).
fn timeline_steps(screen: &str) -> Option<usize> {
    let at = screen.find("timeline · ")?;
    screen[at + "timeline · ".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn db_steps(db: &Path) -> usize {
    Db::open(db)
        .ok()
        .and_then(|db| {
            db.sessions(1)
                .ok()?
                .first()
                .and_then(|s| db.steps(&s.id).ok())
        })
        .map_or(0, |s| s.len())
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The shell command that runs `selfagent run TASK` in the UI against `server`, with `home`
/// as HOME, then says how it exited and stays (so the screen can be read).
fn ui_run(home: &Path, server: &ModelServer, db: &Path, task: &str) -> String {
    format!(
        "env -u SELFAGENT_CONFIG HOME={} {} run --base-url {} --db {} {}; echo EXITED $?; sleep 60",
        shell_quote(home.to_str().unwrap()),
        bin(),
        server.base_url(),
        shell_quote(db.to_str().unwrap()),
        shell_quote(task)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ui_runs_pauses_resumes_quits_and_replays() {
    let script: Vec<Reply> = (0..60)
        .map(|i| {
            Reply::Slow(
                Duration::from_millis(500),
                Box::new(call(
                    json!({"action": "mouse_move", "coordinate": [200 + i * 7, 300]}),
                )),
            )
        })
        .collect();
    let server = ModelServer::start(script, (1280, 800)).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("rec.db");
    let command = ui_run(dir.path(), &server, &db, "move the pointer around");
    let tmux = Tmux::start("run", 140, 40, &command);

    // It starts and the timeline fills.
    let screen = tmux
        .wait_for("two steps in the timeline", Duration::from_secs(60), |s| {
            timeline_steps(s).is_some_and(|n| n >= 2)
        })
        .await;
    let desktop = screen
        .split("desktop ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .expect("the status bar names the desktop")
        .to_owned();
    let _guard = Guard(desktop);

    // Pause: after the current step, nothing new happens.
    tmux.keys("p");
    tmux.wait_for("the paused state", Duration::from_secs(15), |s| {
        s.contains("❚❚ paused")
    })
    .await;
    let (steps, requests) = (db_steps(&db), server.requests().len());
    // An absence is the one thing proved over a time: for 3 s, no step and no request.
    let went_on = never(Duration::from_secs(3), || {
        let now = (db_steps(&db), server.requests().len());
        async move { (now != (steps, requests)).then_some(now) }
    })
    .await;
    assert_eq!(
        went_on,
        None,
        "steps went on while paused: was {:?}",
        (steps, requests)
    );
    let screen = tmux.screen();
    assert_eq!(
        timeline_steps(&screen),
        Some(steps),
        "the timeline and the recording disagree:\n{screen}"
    );

    // Resume: steps go on.
    tmux.keys("p");
    tmux.wait_for("two more steps", Duration::from_secs(30), |s| {
        timeline_steps(s).is_some_and(|n| n >= steps + 2)
    })
    .await;

    // Quit: asked first while the agent runs (another key goes on); then the agent is
    // stopped, the session finalized, the process ends.
    tmux.keys("q");
    tmux.wait_for("the question", Duration::from_secs(10), |s| {
        s.contains("stop the agent and quit?")
    })
    .await;
    tmux.keys("n");
    tmux.wait_for("the question gone", Duration::from_secs(10), |s| {
        !s.contains("stop the agent and quit?")
    })
    .await;
    tmux.keys("q");
    tmux.wait_for("the question", Duration::from_secs(10), |s| {
        s.contains("stop the agent and quit?")
    })
    .await;
    tmux.keys("y");
    let end = tmux
        .wait_for("the process to end", Duration::from_secs(30), |s| {
            s.contains("EXITED")
        })
        .await;
    // Stopped by the person: 130, as Ctrl-C on `run --headless`.
    assert!(end.contains("EXITED 130"), "{end}");
    let db_handle = Db::open(&db).unwrap();
    let session = db_handle.sessions(1).unwrap().remove(0);
    assert_eq!(session.status, "stopped");
    let recorded = db_handle.steps(&session.id).unwrap().len();
    // The timeline also counts the step in progress, which the stop cut short.
    assert!(
        recorded > steps,
        "no step was recorded after resuming: {recorded} <= {steps}"
    );
    assert_eq!(session.steps as usize, recorded);
    let kinds: Vec<String> = db_handle
        .events(&session.id)
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert!(
        kinds.starts_with(&["pause".to_owned(), "resume".to_owned()])
            && kinds.contains(&"stop".to_owned()),
        "{kinds:?}"
    );
    drop(db_handle);

    // Replay shows the same episode.
    let replay = format!(
        "{} replay --db {} {}; sleep 60",
        bin(),
        shell_quote(db.to_str().unwrap()),
        session.id
    );
    let tmux = Tmux::start("replay", 120, 36, &replay);
    let screen = tmux
        .wait_for("the replay", Duration::from_secs(15), |s| {
            s.contains("replay · stopped")
        })
        .await;
    assert_eq!(timeline_steps(&screen), Some(recorded), "{screen}");
    // The person's pause is on the timeline, in words, where it happened.
    assert!(screen.contains("» "), "no intervention marked:\n{screen}");
    tmux.keys("G");
    tmux.wait_for("the last step", Duration::from_secs(5), |s| {
        s.contains(&format!("step {recorded}, after"))
    })
    .await;
    tmux.keys("q");

    // The HTML export: a step index of thumbnails linked to the steps, and the
    // interventions in words; the GIF: one captioned frame per step and the start.
    let html = dir.path().join("episode.html");
    let out = Command::new(bin())
        .args([
            "export",
            &session.id,
            "--html",
            "-o",
            html.to_str().unwrap(),
        ])
        .args(["--db", db.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page = std::fs::read_to_string(&html).unwrap();
    for i in 1..=recorded {
        assert!(
            page.contains(&format!("href=\"#step-{i}\"")),
            "no index entry for {i}"
        );
    }
    assert!(
        page.contains("paused by the person watching"),
        "no pause in the page"
    );
    assert!(
        page.contains("stopped by the person watching"),
        "no stop in the page"
    );
}

/// A safety check raised by the model's provider is asked in the TUI, and the answer goes
/// back with the next request; a model that asks for help gets the person's message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ui_asks_about_safety_checks_and_answers_calls_for_help() {
    use crate::common::model_server::{responses_answer, responses_call, text_reply};
    // OpenAI's protocol: a click with a pending safety check.
    let server = ModelServer::any_protocol(
        vec![
            responses_call(
                vec![json!({"type": "click", "button": "left", "x": 300, "y": 300})],
                vec![json!({"id": "cu_sc_1", "code": "malicious_instructions", "message": "We've detected instructions that may cause harm."})],
            ),
            responses_answer("Done."),
        ],
        (1280, 800),
        responses_call(vec![json!({"type": "wait"})], vec![]),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("rec.db");
    let command = format!(
        "env -u SELFAGENT_CONFIG HOME={} OPENAI_API_KEY=sk-test {} run --base-url {} --model gpt-5.4 --db {} {}; echo EXITED $?; sleep 60",
        shell_quote(dir.path().to_str().unwrap()),
        bin(),
        server.base_url(),
        shell_quote(db.to_str().unwrap()),
        shell_quote("click the thing")
    );
    let tmux = Tmux::start("safety", 140, 40, &command);
    tmux.wait_for("the safety check", Duration::from_secs(60), |s| {
        s.contains("safety check") && s.contains("malicious_instructions")
    })
    .await;
    assert_eq!(
        server.requests().len(),
        1,
        "nothing goes on before the answer"
    );
    tmux.keys("y");
    let end = tmux
        .wait_for("the end", Duration::from_secs(60), |s| {
            s.contains("succeeded")
        })
        .await;
    let second = server.requests()[1].to_string();
    assert!(
        second.contains("acknowledged_safety_checks") && second.contains("cu_sc_1"),
        "the acknowledgement did not reach the model: {second:.400}\n{end}"
    );
    tmux.keys("q");
    tmux.wait_for("the process to end", Duration::from_secs(30), |s| {
        s.contains("EXITED")
    })
    .await;
    let rec = Db::open_read(&db).unwrap();
    let s = rec.sessions(1).unwrap().remove(0);
    if let Some(sandbox) = &s.sandbox {
        drop(Guard(sandbox.clone()));
    }
    let kinds: Vec<String> = rec
        .events(&s.id)
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert!(
        kinds.contains(&"safety_check".to_owned()) && kinds.contains(&"approve".to_owned()),
        "{kinds:?}"
    );

    // UI-TARS asks for help; the person answers with a message.
    let server = ModelServer::any_protocol(
        vec![
            text_reply("Thought: I need the password.\nAction: call_user()"),
            text_reply("Thought: Thanks.\nAction: finished(content='ok')"),
        ],
        (1288, 812),
        text_reply("Thought: wait\nAction: wait()"),
    )
    .await;
    let db = dir.path().join("rec2.db");
    let command = format!(
        "env -u SELFAGENT_CONFIG HOME={} {} run --base-url {} --model UI-TARS-1.5-7B --db {} {}; echo EXITED $?; sleep 60",
        shell_quote(dir.path().to_str().unwrap()),
        bin(),
        server.base_url(),
        shell_quote(db.to_str().unwrap()),
        shell_quote("log in")
    );
    let tmux = Tmux::start("help", 140, 40, &command);
    tmux.wait_for("the call for help", Duration::from_secs(60), |s| {
        s.contains("asks for help")
    })
    .await;
    tmux.keys("m");
    tmux.keys("hunter2-is-the-password");
    tmux.keys("Enter");
    tmux.wait_for("the end", Duration::from_secs(60), |s| {
        s.contains("succeeded")
    })
    .await;
    let second = server.requests()[1].to_string();
    assert!(
        second.contains("hunter2-is-the-password"),
        "the answer did not reach the model: {second:.600}"
    );
    tmux.keys("q");
    tmux.wait_for("the process to end", Duration::from_secs(30), |s| {
        s.contains("EXITED")
    })
    .await;
    let rec = Db::open_read(&db).unwrap();
    let s = rec.sessions(1).unwrap().remove(0);
    if let Some(sandbox) = &s.sandbox {
        drop(Guard(sandbox.clone()));
    }
    assert_eq!(s.status, "succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ui_exits_with_the_code_headless_gives_the_same_end() {
    // A desktop that cannot start is the harness failing: 4, in the TUI as headless.
    let server = ModelServer::start(vec![], (1280, 800)).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("rec.db");
    let args = format!(
        "run --base-url {} --db {} --image nosuch-image:tag {}",
        server.base_url(),
        shell_quote(db.to_str().unwrap()),
        shell_quote("anything")
    );
    let headless = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "env -u SELFAGENT_CONFIG HOME={} {} {args} --headless </dev/null",
            shell_quote(dir.path().to_str().unwrap()),
            bin()
        ))
        .output()
        .unwrap();
    assert_eq!(
        headless.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&headless.stderr)
    );
    // With every debug line logged: none of them may land on the UI's screen.
    let command = format!(
        "env -u SELFAGENT_CONFIG -u XDG_STATE_HOME SELFAGENT_LOG=debug HOME={} {} {args}; \
         echo EXITED $?; sleep 60",
        shell_quote(dir.path().to_str().unwrap()),
        bin()
    );
    let tmux = Tmux::start("exit", 140, 40, &command);
    let screen = tmux
        .wait_for("the error on screen", Duration::from_secs(60), |s| {
            s.contains("nosuch-image")
        })
        .await;
    assert!(!screen.contains("DEBUG"), "a log line on the UI:\n{screen}");
    assert!(screen.contains("✗ error"), "{screen}");
    tmux.keys("?");
    let log = dir.path().join(".local/state/selfagent/tui.log");
    tmux.wait_for("the log's path in the help", Duration::from_secs(10), |s| {
        s.contains("tui.log")
    })
    .await;
    tmux.keys("q");
    tmux.keys("q");
    let end = tmux
        .wait_for("the process to end", Duration::from_secs(30), |s| {
            s.contains("EXITED")
        })
        .await;
    assert!(end.contains("EXITED 4"), "{end}");
    // Told at exit where they went; there they are.
    assert!(end.contains("log line"), "{end}");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("DEBUG"), "{logged}");
}

/// The selfagent process (not the shell around it) whose command line holds `needle`.
fn selfagent_pid(needle: &str) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let exe = std::fs::read_link(e.path().join("exe")).ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        (exe == Path::new(bin()) && String::from_utf8_lossy(&cmdline).contains(needle))
            .then_some(pid)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn y_copies_the_view_and_sigterm_stops_the_agent_and_restores_the_terminal() {
    let script: Vec<Reply> = (0..60)
        .map(|_| {
            Reply::Slow(
                Duration::from_millis(300),
                Box::new(call(json!({"action": "wait", "duration": 0.5}))),
            )
        })
        .collect();
    let server = ModelServer::start(script, (1280, 800)).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("rec.db");
    let command = ui_run(dir.path(), &server, &db, "wait around");
    let tmux = Tmux::start("term", 160, 40, &command);
    // OSC 52 from the application becomes a tmux buffer.
    tmux.cmd(&["set", "-g", "set-clipboard", "on"]);
    tmux.wait_for(
        "a running agent with a view",
        Duration::from_secs(60),
        |s| s.contains("● running") && s.contains("view: y copy"),
    )
    .await;
    tmux.keys("y");
    let copied =
        eventually(
            "the copied URL in tmux's buffer",
            Duration::from_secs(10),
            || {
                let buffer =
                    String::from_utf8_lossy(&tmux.cmd(&["show-buffer"]).stdout).into_owned();
                async move {
                    check(!buffer.is_empty(), || "an empty buffer".to_owned()).map(|()| buffer)
                }
            },
        )
        .await;
    assert!(
        copied.starts_with("http://127.0.0.1:") && copied.contains("token="),
        "copied: {copied:?}\n{}",
        tmux.screen()
    );
    let pid = selfagent_pid(db.to_str().unwrap()).expect("the selfagent process");
    let killed = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let end = tmux
        .wait_for("the process to end", Duration::from_secs(60), |s| {
            s.contains("EXITED")
        })
        .await;
    assert!(end.contains("EXITED 130"), "{end}");
    let alternate = tmux.cmd(&["display", "-p", "-t", "t", "#{alternate_on}"]);
    assert_eq!(
        String::from_utf8_lossy(&alternate.stdout).trim(),
        "0",
        "the terminal was left in the alternate screen:\n{end}"
    );
    let session = &Db::open(&db).unwrap().sessions(1).unwrap()[0];
    assert_eq!(session.status, "stopped");
    assert!(
        Command::new("docker")
            .args(["inspect", session.sandbox.as_deref().unwrap_or("none")])
            .output()
            .is_ok_and(|o| !o.status.success()),
        "the desktop is still there"
    );
}
