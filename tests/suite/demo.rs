//! `selfagent demo`: a person's demonstration, driven here by a VNC client nobody here wrote
//! (vncdotool, from PyPI) through the recording proxy, raw and over the browser view's
//! WebSocket; the steps it records, the grade, and the demonstration done again by `rerun`.

use crate::common::screens::terminal_ready;
use crate::common::sdk::python;
use crate::common::wait::eventually;
use crate::common::{SnapshotsOf, bin, cli, stderr};
use pretty_assertions::assert_eq;
use selfagent::action::{Action, Button, Point};
use selfagent::record::Db;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const TASK: &str = r#"
id = "demo-terminal"
instruction = "In the open terminal, write demo-7 into ~/demo.txt."

[[setup]]
launch = "terminal"

[[setup]]
wait_for_window = { class = "(?i)xfce4-terminal", timeout = 30 }

[check]
file = "~/demo.txt"
equals = "demo-7\n"
"#;

fn vncdo() -> PathBuf {
    python().with_file_name("vncdo")
}

/// vncdotool's commands against `server` ("host::port"), to the end; its exit status and
/// output.
async fn drive(server: &str, password: &str, commands: &[&str]) -> std::process::Output {
    let run = tokio::process::Command::new(vncdo())
        .args(["-s", server, "-p", password])
        .args(commands)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .expect("vncdotool finished")
        .expect("vncdotool runs")
}

fn server_of(addr: &str) -> String {
    let (host, port) = addr.rsplit_once(':').unwrap();
    format!("{host}::{port}")
}

/// The desktop's screen, decoded (`sandbox shot`).
fn screen(sandbox: &str, dir: &Path) -> Result<image::RgbImage, String> {
    let png = dir.join("screen.png");
    let out = cli(&[
        "sandbox",
        "shot",
        &sandbox[..12],
        "-o",
        png.to_str().unwrap(),
    ]);
    if !out.status.success() {
        return Err(stderr(&out));
    }
    image::open(&png)
        .map(|i| i.to_rgb8())
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persons_vnc_input_is_recorded_as_steps_graded_and_done_again() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("rec.db");
    let _snapshots = SnapshotsOf(db.clone());
    let task = dir.path().join("task.toml");
    std::fs::write(&task, TASK).unwrap();
    let mut demo = tokio::process::Command::new(bin())
        .args(["demo", "--headless", "--json", "--task"])
        .arg(&task)
        .arg("--db")
        .arg(&db)
        .env("HOME", dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(demo.stdout.take().unwrap()).lines();
    let first: Value = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
    let mut keys: Vec<&str> = first
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["sandbox", "session", "view_url", "vnc", "vnc_password"]
    );
    let (session, sandbox) = (
        first["session"].as_str().unwrap(),
        first["sandbox"].as_str().unwrap(),
    );
    let vnc = first["vnc"].as_str().unwrap();
    let password = first["vnc_password"].as_str().unwrap();
    assert!(vnc.starts_with("127.0.0.1:"), "loopback only: {vnc}");
    let view_url = first["view_url"].as_str().unwrap();
    let port = vnc.rsplit_once(':').unwrap().1;
    assert!(view_url.contains(&format!("&port={port}&")), "{view_url}");
    let token = view_url
        .split("path=websockify%3Ftoken%3D")
        .nth(1)
        .and_then(|rest| rest.split('&').next())
        .unwrap()
        .to_owned();
    // The rest of stdout: the events, kept for the end.
    let events = tokio::spawn(async move {
        let mut all = Vec::new();
        while let Ok(Some(l)) = lines.next_line().await {
            all.push(serde_json::from_str::<Value>(&l).unwrap());
        }
        all
    });

    // The terminal has drawn its prompt: the screen the person acts on.
    eventually("the terminal's prompt", Duration::from_secs(60), || async {
        screen(sandbox, dir.path()).and_then(|s| {
            terminal_ready(&s)
                .then_some(())
                .ok_or_else(|| "no prompt yet".to_owned())
        })
    })
    .await;

    // A wrong password and a view without the token get nothing.
    // (vncdotool exits 0 either way: its log says; the steps below show nothing got through.)
    let wrong = drive(&server_of(vnc), "wrongpw1", &["-v", "key", "a"]).await;
    let said = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        said.contains("authentication failed"),
        "a wrong password was let in: {said}"
    );
    let mut ws = tokio::net::TcpStream::connect(vnc).await.unwrap();
    ws.write_all(
        b"GET /websockify?token=nope HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
          Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
          Sec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), ws.read_to_end(&mut reply)).await;
    assert!(
        String::from_utf8_lossy(&reply).starts_with("HTTP/1.1 403"),
        "{}",
        String::from_utf8_lossy(&reply)
    );

    // The browser view's way in (a WebSocket with the token): the first click.
    let bridge = selfagent::sandbox::viewsock::bridge(
        vnc.parse().unwrap(),
        format!("/websockify?token={token}"),
    )
    .await
    .unwrap();
    let out = drive(
        &format!("127.0.0.1::{}", bridge.port()),
        password,
        &["move", "640", "420", "click", "1", "pause", "0.8"],
    )
    .await;
    assert!(
        out.status.success(),
        "over the WebSocket: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A plain VNC client: typing, a key, a scroll, a drag, a double click, a combination.
    let out = drive(
        &server_of(vnc),
        password,
        &[
            "type",
            "echo demo-$((3+4)) > ~/demo.txt",
            "key",
            "enter",
            "pause",
            "1.2",
            "move",
            "600",
            "300",
            "click",
            "5",
            "click",
            "5",
            "click",
            "5",
            "pause",
            "0.8",
            "move",
            "300",
            "300",
            "mousedown",
            "1",
            "drag",
            "500",
            "320",
            "mouseup",
            "1",
            "pause",
            "0.8",
            "move",
            "700",
            "500",
            "click",
            "1",
            "click",
            "1",
            "pause",
            "0.8",
            "key",
            "ctrl-c",
            "pause",
            "0.8",
        ],
    )
    .await;
    assert!(
        out.status.success(),
        "vncdotool: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Ctrl-C ends the demonstration; the task's check grades it.
    let pid = demo.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(120), demo.wait())
        .await
        .expect("the demonstration ends after Ctrl-C")
        .unwrap();
    let mut err = String::new();
    demo.stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0), "{err}");
    let events = events.await.unwrap();
    assert!(
        events.iter().any(|e| e["type"] == "finished"),
        "the events follow the first line"
    );
    let rec = Db::open(&db).unwrap();
    let grade = rec.latest_grade(session).unwrap().expect("graded");
    assert_eq!(grade.passed, Some(true), "{grade:?}");
    let info = rec.session(session).unwrap();
    assert_eq!(info.status, "succeeded");
    assert_eq!(info.meta["source"], "human");
    assert_eq!(info.meta["ended_by"], "demonstrator", "{}", info.meta);
    let steps = rec.steps(session).unwrap();
    let actions: Vec<Action> = steps
        .iter()
        .map(|s| serde_json::from_value(s.actions[0]["action"].clone()).unwrap())
        .collect();
    let click = |x, y, count| Action::Click {
        coordinate: Some(Point::new(x, y)),
        button: Button::Left,
        count,
        modifiers: vec![],
    };
    assert_eq!(actions.len(), 7, "{actions:#?}");
    assert_eq!(actions[0], click(640, 420, 1));
    assert_eq!(
        actions[1],
        Action::Type {
            text: "echo demo-$((3+4)) > ~/demo.txt".into()
        }
    );
    assert_eq!(
        actions[2],
        Action::Key {
            text: "Return".into()
        }
    );
    assert_eq!(
        actions[3],
        Action::Scroll {
            coordinate: Some(Point::new(600, 300)),
            dx: 0,
            dy: 3,
            modifiers: vec![]
        }
    );
    let Action::Drag {
        path,
        button: Button::Left,
    } = &actions[4]
    else {
        panic!("not a drag: {:?}", actions[4]);
    };
    assert_eq!(
        (path[0], *path.last().unwrap()),
        (Point::new(300, 300), Point::new(500, 320))
    );
    assert_eq!(actions[5], click(700, 500, 2));
    assert_eq!(
        actions[6],
        Action::Key {
            text: "ctrl+c".into()
        }
    );
    for s in &steps {
        assert_eq!(s.meta["source"], "human", "step {}", s.idx);
        assert!(
            s.frame_before.is_some() && s.frame_after.is_some(),
            "step {} has both screens",
            s.idx
        );
    }

    // A trajectory others can train on: ATIF, judged by Harbor's own models; every step the
    // person's, none a model call.
    let atif = dir.path().join("atif");
    let out = cli(&[
        "export",
        session,
        "--format",
        "atif",
        "-o",
        atif.to_str().unwrap(),
        "--db",
        db.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let checked = tokio::process::Command::new(python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/atif.py"))
        .arg(atif.join("trajectory.json"))
        .output()
        .await
        .unwrap();
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stderr)
    );
    let traj: Value =
        serde_json::from_slice(&std::fs::read(atif.join("trajectory.json")).unwrap()).unwrap();
    let actors: Vec<&Value> = traj["steps"]
        .as_array()
        .unwrap()
        .iter()
        .skip(1)
        .map(|s| &s["extra"]["actor"])
        .collect();
    assert_eq!(actors, vec![&Value::from("human"); 7]);

    // The demonstration done again on a fresh desktop, without a person or a model.
    let out = tokio::process::Command::new(bin())
        .args(["rerun", session, "--headless", "--json", "--db"])
        .arg(&db)
        .env("HOME", dir.path())
        .env_remove("OPENAI_BASE_URL")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "the re-run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .and_then(|l| serde_json::from_str::<Value>(l).ok())
        .expect("the re-run's first event")["session"]
        .as_str()
        .unwrap()
        .to_owned();
    let grade = rec
        .latest_grade(&again)
        .unwrap()
        .expect("the re-run is graded");
    assert_eq!(grade.passed, Some(true), "{grade:?}");
    let marks: Vec<Value> = rec
        .steps(&again)
        .unwrap()
        .iter()
        .map(|s| s.meta["rerun"]["mode"].clone())
        .collect();
    assert_eq!(marks, vec![Value::from("replayed"); 7]);
}
