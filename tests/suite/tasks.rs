//! Tasks end to end: `batch` of the example tasks (tests/tasks) with a scripted model that
//! solves some and fails others on purpose, its reports (JSON, JUnit, HTML rendered in
//! headless Chromium), re-grading from the final-state snapshot, export, `run --task`,
//! and the OSWorld import.

use crate::common::model_server::{ModelServer, Reply, Route, answer, call, route, text_reply};
use crate::common::screens::{
    file_dialog_open, form_submitted, link_gone, page_painted, rename_dialog_open,
};
use crate::common::wait::{check, eventually};
use crate::common::{SnapshotsOf, bin, decode_png, text};
use pretty_assertions::assert_eq;
use selfagent::record::Db;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

fn tasks_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tasks")
}

fn typed(text: &str) -> Reply {
    call(json!({"action": "type", "text": text}))
}

fn key(k: &str) -> Reply {
    call(json!({"action": "key", "text": k}))
}

/// `reply` once the screenshot passes `ready`.
fn when(ready: fn(&image::RgbImage) -> bool, reply: Reply) -> Reply {
    Reply::When(ready, Box::new(reply))
}

/// `reply`, sent again (every 4 waits of 0.3 s) until a screenshot passes `done`: for keys
/// an app may ignore. GTK's file chooser ignores Return for a moment after it opens (until
/// it has resolved its folder: 100-200 ms on an idle machine, seen here with xdotool inside
/// the desktop, so not an input path of ours; longer on a loaded one).
fn until(done: fn(&image::RgbImage) -> bool, reply: Reply) -> Reply {
    Reply::Until {
        done,
        every: 4,
        reply: Box::new(reply),
    }
}

fn judge_says(passed: bool) -> Reply {
    answer(&json!({"passed": passed, "reason": "scripted judge"}).to_string())
}

/// Scripted solutions of the example tasks (keyboard, one click); three fail on purpose. Each reply comes
/// after 600 ms, as a (very fast) model's would: an instant script outpaces the apps on a
/// loaded two-core machine (a key pressed before the dialog it is meant for has opened),
/// which tests the script, not selfagent.
fn routes() -> Vec<Route> {
    fn think(r: Reply) -> Reply {
        match r {
            Reply::When(ready, inner) => Reply::When(ready, Box::new(think(*inner))),
            Reply::Until { done, every, reply } => Reply::Until {
                done,
                every,
                reply: Box::new(think(*reply)),
            },
            r => Reply::Slow(std::time::Duration::from_millis(600), Box::new(r)),
        }
    }
    let routes = vec![
        route(
            "directory named 'reports'",
            vec![typed("mkdir ~/reports\n")],
        ),
        // Fails: the wrong words.
        route(
            "hello from selfagent",
            vec![typed("echo 'hello from someone' > ~/greeting.txt\n")],
        ),
        route(
            "remember the milk",
            vec![key("ctrl+End"), typed("remember the milk\n"), key("ctrl+s")],
        ),
        route(
            "buy bread",
            vec![
                typed("buy bread"),
                key("ctrl+s"),
                when(file_dialog_open, typed("todo.txt")),
                until(|img| !file_dialog_open(img), key("Return")),
            ],
        ),
        route(
            "rename the file draft.txt",
            vec![
                key("Home"),
                key("F2"),
                when(rename_dialog_open, typed("final")),
                until(|img| !rename_dialog_open(img), key("Return")),
            ],
        ),
        // Fails: gives up at once.
        route(
            "folder named 'Projects'",
            vec![answer("I cannot find the file manager.")],
        ),
        // Into the name field (clicked, whatever had the focus), then Return until the
        // page thanks us.
        route(
            "Ada Lovelace",
            vec![
                when(
                    page_painted,
                    call(json!({"action": "left_click", "coordinate": [220, 262]})),
                ),
                typed("Ada Lovelace"),
                until(form_submitted, key("Return")),
            ],
        ),
        // Where the link is on the 1280x800 desktop (Tab order depends on where Firefox put
        // the focus, which varies with load).
        route(
            "Continue to the next page",
            vec![
                when(
                    page_painted,
                    call(json!({"action": "left_click", "coordinate": [190, 185]})),
                ),
                // Done once the next page shows (under load the navigation can take longer
                // than the screen stays quiet after the click).
                when(link_gone, answer("I followed the link.")),
            ],
        ),
        // Fails: the judge says no.
        Route {
            judge: Some(judge_says(false)),
            ..route("list the files in /etc", vec![typed("ls /etc\n")])
        },
    ];
    routes
        .into_iter()
        .map(|r| Route {
            replies: r.replies.into_iter().map(think).collect(),
            ..r
        })
        .collect()
}

const BROKEN: &str = r#"
id = "broken-setup"
instruction = "never runs: the setup fails"
[[setup]]
exec = "echo 'no such fixture' >&2; exit 3"
[check]
command = "true"
"#;

async fn selfagent(args: &[&str], home: &Path) -> Output {
    tokio::process::Command::new(bin())
        .args(args)
        .env_remove("OPENAI_BASE_URL")
        .env_remove("SELFAGENT_DB")
        .env("HOME", home)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap()
}

/// `selfagent batch ARGS…` against `server` (model `scripted`), recording to `db` and
/// reporting to `report`.
async fn batch(
    args: &[&str],
    server: &ModelServer,
    db: &Path,
    report: &Path,
    home: &Path,
) -> Output {
    let url = server.base_url();
    let mut all = vec!["batch"];
    all.extend_from_slice(args);
    all.extend([
        "--base-url",
        &url,
        "--model",
        "scripted",
        "--db",
        db.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
    ]);
    selfagent(&all, home).await
}

/// `selfagent tasks import-osworld INPUTS… --out OUT`, which must succeed; its output.
async fn import_osworld(inputs: &[&Path], out: &Path, home: &Path) -> String {
    let mut args = vec!["tasks", "import-osworld"];
    args.extend(inputs.iter().map(|p| p.to_str().unwrap()));
    args.extend(["--out", out.to_str().unwrap()]);
    let output = selfagent(&args, home).await;
    let log = text(&output);
    assert!(output.status.success(), "{log}");
    log
}

/// `selfagent run --headless --task TASK` against `server`, owning its path.
async fn run_task_file(task: PathBuf, server: &ModelServer, db: &Path, home: &Path) -> Output {
    run_task(&task, server, db, home).await
}

/// `selfagent run --headless --task TASK` against `server`.
async fn run_task(task: &Path, server: &ModelServer, db: &Path, home: &Path) -> Output {
    let url = server.base_url();
    let args = [
        "run",
        "--headless",
        "--task",
        task.to_str().unwrap(),
        "--base-url",
        &url,
        "--db",
        db.to_str().unwrap(),
    ];
    selfagent(&args, home).await
}

/// Renders `html` in headless Chromium and returns the screenshot.
fn render(html: &Path, png: &Path) -> image::RgbImage {
    let chromium = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|c| {
            std::process::Command::new("which")
                .arg(c)
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .expect("headless Chromium is needed to check the HTML report (.ci/run installs the `chromium` package)");
    let out = std::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1280,2400",
            &format!("--screenshot={}", png.display()),
            &format!("file://{}", html.display()),
        ])
        .output()
        .unwrap();
    assert!(
        png.exists(),
        "no screenshot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    decode_png(&std::fs::read(png).unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_grades_reports_regrades_and_exports() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let db = home.join("rec.db");
    let _snapshots = SnapshotsOf(db.clone());
    let report = home.join("report");
    let extra = home.join("extra");
    std::fs::create_dir_all(&extra).unwrap();
    std::fs::write(extra.join("broken.toml"), BROKEN).unwrap();
    let server = ModelServer::routed(routes(), (1280, 800)).await;

    let out = batch(
        &[
            tasks_dir().to_str().unwrap(),
            extra.to_str().unwrap(),
            "--parallel",
            "4",
        ],
        &server,
        &db,
        &report,
        home,
    )
    .await;
    let log = text(&out);
    // A harness error (the broken setup) makes the batch exit 4.
    assert_eq!(out.status.code(), Some(4), "{log}");
    assert!(server.problems().is_empty(), "{:?}", server.problems());

    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("report.json")).unwrap())
            .unwrap();
    let episodes = r["episodes"].as_array().unwrap();
    let verdicts: BTreeMap<&str, (bool, bool)> = episodes
        .iter()
        .map(|e| {
            (
                e["task_id"].as_str().unwrap(),
                (
                    e["passed"].as_bool().unwrap(),
                    !e["harness_error"].is_null(),
                ),
            )
        })
        .collect();
    let want: BTreeMap<&str, (bool, bool)> = [
        ("broken-setup", (false, true)),
        ("editor-append", (true, false)),
        ("editor-new-file", (true, false)),
        ("files-new-folder", (false, false)),
        ("files-rename", (true, false)),
        ("firefox-form", (true, false)),
        ("firefox-link", (true, false)),
        ("terminal-judge", (false, false)),
        ("terminal-mkdir", (true, false)),
        ("terminal-write-file", (false, false)),
    ]
    .into_iter()
    .collect();
    if verdicts != want {
        // Keep the evidence: the recording and the reports outlive the temporary directory.
        let keep = std::env::temp_dir().join("selfagent-failed-batch");
        let _ = std::fs::create_dir_all(&keep);
        let _ = std::fs::copy(&db, keep.join("rec.db"));
        for f in ["report.json", "junit.xml", "report.html"] {
            let _ = std::fs::copy(report.join(f), keep.join(f));
        }
        eprintln!("recording and reports kept in {}", keep.display());
    }
    assert_eq!(verdicts, want, "{log}");
    // Error bars: each graded task's Wilson interval holds its rate; overall, the mean over
    // the nine graded tasks (6 of 9 passed) with a clustered interval, and the warning that
    // one run a task tells little.
    for t in r["summary"].as_array().unwrap() {
        let (rate, ci) = (&t["pass_rate"], &t["ci95"]);
        if rate.is_null() {
            assert!(ci.is_null(), "{t}");
            continue;
        }
        let (lo, hi, p) = (
            ci[0].as_f64().unwrap(),
            ci[1].as_f64().unwrap(),
            rate.as_f64().unwrap(),
        );
        assert!(
            lo <= p && p <= hi && hi - lo > 0.5,
            "one run: a wide interval around the rate: {t}"
        );
    }
    let overall = &r["overall"]["pass_rate"];
    assert_eq!(overall["tasks"], 9, "{overall}");
    assert!(
        (overall["mean"].as_f64().unwrap() - 6.0 / 9.0).abs() < 1e-9,
        "{overall}"
    );
    let (lo, hi) = (
        overall["ci95"][0].as_f64().unwrap(),
        overall["ci95"][1].as_f64().unwrap(),
    );
    assert!(lo < 6.0 / 9.0 && 6.0 / 9.0 < hi, "{overall}");
    assert!(
        r["overall"]["caveat"]
            .as_str()
            .unwrap()
            .contains("graded only 1 time"),
        "{r}"
    );
    assert!(log.contains("pass rate over 9 tasks 67% (95% CI"), "{log}");
    assert!(
        log.contains("note: the interval is too wide to mean much"),
        "{log}"
    );
    assert!(
        episodes
            .iter()
            .find(|e| e["task_id"] == "broken-setup")
            .unwrap()["harness_error"]
            .as_str()
            .unwrap()
            .contains("no such fixture"),
        "the harness error names the setup's stderr: {log}"
    );
    assert_eq!(
        (
            r["passed"].as_u64(),
            r["failed"].as_u64(),
            r["harness_errors"].as_u64()
        ),
        (Some(6), Some(3), Some(1))
    );

    // One recorded session per episode; every agent episode graded once.
    let rec = Db::open(&db).unwrap();
    for e in episodes {
        let id = e["session_id"].as_str().unwrap();
        let s = rec.session(id).unwrap();
        assert_eq!(s.task_id.as_deref(), e["task_id"].as_str());
        let grades = rec.grades(id).unwrap();
        if e["harness_error"].is_null() {
            assert_eq!(grades.len(), 1, "{id}");
            assert_eq!(grades[0].passed, e["passed"].as_bool());
        } else {
            assert_eq!(s.status, "error");
            assert!(grades.is_empty());
        }
    }
    // The broken setup was run twice (`--retry-harness` defaults to 1): the lost attempt
    // is listed apart in its episode, recorded, and in no count.
    let broken = episodes
        .iter()
        .find(|e| e["task_id"] == "broken-setup")
        .unwrap();
    let retries = broken["harness_retries"].as_array().unwrap();
    assert_eq!(retries.len(), 1, "{broken}");
    assert!(
        retries[0]["error"]
            .as_str()
            .unwrap()
            .contains("no such fixture")
            && retries[0]["session_id"] != broken["session_id"],
        "{broken}"
    );
    assert!(
        log.contains("RETRY broken-setup #1: harness error, running it again (1 of 1)"),
        "{log}"
    );
    assert_eq!(rec.task_sessions().unwrap().len(), 11);

    // JUnit: failed checks are failures, the harness error is an error.
    let junit = std::fs::read_to_string(report.join("junit.xml")).unwrap();
    assert_eq!(junit.matches("<testcase ").count(), 10);
    assert_eq!(junit.matches("<failure ").count(), 3);
    assert_eq!(junit.matches("<error ").count(), 1);

    // The HTML report renders: a page with pictures, not a blank or broken one.
    let html = std::fs::read_to_string(report.join("report.html")).unwrap();
    assert!(
        html.matches("data:image/jpeg;base64,").count() >= 9,
        "thumbnails for every agent episode"
    );
    let shot = render(&report.join("report.html"), &home.join("report.png"));
    let colours: std::collections::HashSet<[u8; 3]> = shot.pixels().map(|p| p.0).collect();
    assert!(
        colours.len() > 2000,
        "the rendered report has {} colours",
        colours.len()
    );
    std::fs::copy(
        home.join("report.png"),
        std::env::temp_dir().join("selfagent-batch-report.png"),
    )
    .ok();

    // Re-grade the failed terminal-write-file episode with a changed check that reads
    // something the original checks never read: only the snapshot can answer it.
    let write_session = episodes
        .iter()
        .find(|e| e["task_id"] == "terminal-write-file")
        .unwrap()["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let fixed = home.join("fixed.toml");
    let original = std::fs::read_to_string(tasks_dir().join("terminal-write-file.toml")).unwrap();
    let check_at = original.find("[check]").unwrap();
    std::fs::write(
        &fixed,
        format!(
            "{}[check]\ncommand = \"grep -c someone /home/user/greeting.txt\"\nstdout = \"^1$\"\n",
            &original[..check_at]
        ),
    )
    .unwrap();
    let from_recording = selfagent(
        &[
            "grade",
            &write_session,
            "--task",
            fixed.to_str().unwrap(),
            "--no-snapshot",
            "--db",
            db.to_str().unwrap(),
        ],
        home,
    )
    .await;
    assert_eq!(
        from_recording.status.code(),
        Some(4),
        "{}",
        text(&from_recording)
    );
    let regraded = selfagent(
        &[
            "grade",
            &write_session,
            "--task",
            fixed.to_str().unwrap(),
            "--db",
            db.to_str().unwrap(),
            "--json",
        ],
        home,
    )
    .await;
    assert_eq!(regraded.status.code(), Some(0), "{}", text(&regraded));
    let list: Value = serde_json::from_slice(&regraded.stdout).unwrap();
    assert_eq!(list[0]["before"]["passed"], json!(null), "{list}");
    assert_eq!(list[0]["after"]["passed"], json!(true), "{list}");
    assert!(
        list[0]["after"]["evidence"]
            .as_str()
            .unwrap()
            .starts_with("snapshot ")
    );
    let history = rec.grades(&write_session).unwrap();
    assert_eq!(
        history.iter().map(|g| g.passed).collect::<Vec<_>>(),
        vec![Some(false), None, Some(true)],
        "the old grades stay in the history"
    );
    // With the recorded task again: the original verdict.
    let again = selfagent(
        &["grade", &write_session, "--db", db.to_str().unwrap()],
        home,
    )
    .await;
    assert_eq!(again.status.code(), Some(2), "{}", text(&again));
    // --all with task files: only the sessions of those tasks.
    let mkdir = tasks_dir().join("terminal-mkdir.toml");
    let all = selfagent(
        &[
            "grade",
            "--all",
            "--task",
            mkdir.to_str().unwrap(),
            "--json",
            "--db",
            db.to_str().unwrap(),
        ],
        home,
    )
    .await;
    assert_eq!(all.status.code(), Some(0), "{}", text(&all));
    let list: Value = serde_json::from_slice(&all.stdout).unwrap();
    let graded: Vec<(&str, &Value)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["task_id"].as_str().unwrap(), &r["after"]["passed"]))
        .collect();
    assert_eq!(graded, vec![("terminal-mkdir", &json!(true))]);

    // Export the editor episode three ways.
    let editor = episodes
        .iter()
        .find(|e| e["task_id"] == "editor-append")
        .unwrap()["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let steps = rec.steps(&editor).unwrap();
    let page = home.join("ep.html");
    let gif = home.join("ep.gif");
    let traj = home.join("traj");
    for (flag, path) in [("--html", &page), ("--gif", &gif), ("--jsonl", &traj)] {
        let o = selfagent(
            &[
                "export",
                &editor,
                flag,
                "-o",
                path.to_str().unwrap(),
                "--db",
                db.to_str().unwrap(),
            ],
            home,
        )
        .await;
        assert!(o.status.success(), "{}", text(&o));
    }
    let page = std::fs::read_to_string(&page).unwrap();
    // The start, each step's result, and a thumbnail of each in the step index.
    assert_eq!(page.matches("<img ").count(), 2 * steps.len() + 1);
    assert!(page.contains("href=\"#step-1\""));
    assert!(page.contains("remember the milk"));
    let frames = {
        use image::AnimationDecoder;
        let d =
            image::codecs::gif::GifDecoder::new(std::io::Cursor::new(std::fs::read(&gif).unwrap()))
                .unwrap();
        d.into_frames().collect_frames().unwrap()
    };
    assert_eq!(frames.len(), steps.len() + 1);
    assert_eq!(frames[0].buffer().width(), 640);
    let lines: Vec<Value> = std::fs::read_to_string(traj.join("traj.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "three actions and the final answer");
    // OSWorld's form: pyautogui code, with selfagent's own action beside it.
    assert_eq!(lines[1]["info"]["selfagent_action"]["action"], "type");
    let code = lines[1]["action"].as_str().unwrap();
    assert!(code.starts_with("pyautogui.write(message='"), "{code}");
    assert_eq!(lines[3]["action"], "DONE");
    assert_eq!(lines[3]["done"], true);
    assert_eq!(lines[3]["reward"], 1.0);
    for l in &lines {
        let f = traj.join(l["screenshot_file"].as_str().unwrap());
        assert_eq!(
            decode_png(&std::fs::read(f).unwrap()).dimensions(),
            (1280, 800)
        );
    }
    // Every graded episode left a snapshot image, listed with its task.
    let listed = selfagent(&["sandbox", "snapshots", "--json"], home).await;
    assert!(listed.status.success(), "{}", text(&listed));
    let listed: Vec<Value> = serde_json::from_slice(&listed.stdout).unwrap();
    for e in episodes.iter().filter(|e| e["harness_error"].is_null()) {
        let s = e["session_id"].as_str().unwrap();
        let found = listed
            .iter()
            .find(|l| l["session"] == s)
            .unwrap_or_else(|| panic!("no snapshot of {s}"));
        assert_eq!(found["task"], e["task_id"]);
        assert_eq!(found["image"], selfagent::sandbox::snapshot_image(s));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn run_with_a_task_reports_a_failed_setup_as_a_harness_error() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let task = home.join("broken.toml");
    std::fs::write(&task, BROKEN).unwrap();
    let db = home.join("rec.db");
    let _snapshots = SnapshotsOf(db.clone());
    let server = ModelServer::start(vec![], (1280, 800)).await;
    let out = run_task(&task, &server, &db, home).await;
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("no such fixture"),
        "{}",
        text(&out)
    );
    assert!(server.requests().is_empty(), "the model was never asked");
    let rec = Db::open(&db).unwrap();
    let s = &rec.task_sessions().unwrap()[0];
    assert_eq!(
        (s.status.as_str(), s.task_id.as_deref(), s.steps),
        ("error", Some("broken-setup"), 0)
    );
    assert!(
        s.error.as_deref().unwrap().contains("setup step 1 of 1"),
        "{:?}",
        s.error
    );
}

/// The file `script` writes to `OUT`, run by the office image's Python in a throwaway
/// container without network: stand-ins for OSWorld's downloads, which are on Google
/// Drive and Hugging Face (unreachable here).
async fn made_in_office_image(name: &str, script: &str) -> Vec<u8> {
    // OUT keeps the file's name: its extension tells some writers the format.
    let wrapper = "import base64, os, sys; os.makedirs('/tmp/stand-in'); \
                   OUT = '/tmp/stand-in/' + os.environ['NAME']; exec(os.environ['SCRIPT']); \
                   sys.stdout.write(base64.b64encode(open(OUT, 'rb').read()).decode())";
    let out = office_python(
        &[
            ("SCRIPT", script.to_owned()),
            ("NAME", name.replace('/', "_")),
        ],
        &["-c", wrapper],
    )
    .await;
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(String::from_utf8_lossy(&out.stdout).trim())
        .unwrap()
}

/// The office image's Python (`/opt/osworld/bin/python ARGS…`) in a throwaway container
/// without network, with `env` set.
async fn office_python(env: &[(&str, String)], args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new("docker");
    cmd.args(["run", "--rm", "--network", "none"]);
    for (k, v) in env {
        cmd.arg("-e").arg(format!("{k}={v}"));
    }
    cmd.args([
        "--entrypoint",
        "/opt/osworld/bin/python",
        selfagent::sandbox::image::OFFICE_IMAGE,
    ]);
    cmd.args(args).output().await.unwrap()
}

/// `selfagent tasks audit TASKS ARGS…`, recording to `db`.
async fn audit(tasks: &Path, args: &[&str], db: &Path, home: &Path) -> Output {
    let report = home.join(format!(
        "audit-{}",
        tasks.file_name().unwrap().to_string_lossy()
    ));
    let mut all = vec!["tasks", "audit", tasks.to_str().unwrap()];
    all.extend_from_slice(args);
    all.extend([
        "--db",
        db.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
    ]);
    selfagent(&all, home).await
}

/// The latest grade of the session that ran `task_id`.
fn grade_of(db: &Path, task_id: &str) -> (String, selfagent::task::check::Grade) {
    let rec = Db::open(db).unwrap();
    let s = rec
        .task_sessions()
        .unwrap()
        .into_iter()
        .filter(|s| s.task_id.as_deref() == Some(task_id))
        .max_by_key(|s| (s.created_at, s.id.clone()))
        .unwrap_or_else(|| panic!("no session of {task_id}"));
    let row = rec.latest_grade(&s.id).unwrap().unwrap();
    let g = serde_json::from_value(row.details.clone())
        .unwrap_or_else(|e| panic!("grade {:?}: {e}", row.details));
    (s.id, g)
}

/// OSWorld tasks in their exact format, imported and run on the office desktop, graded by
/// OSWorld's own metrics inside it: a solved task passes and the same task with a no-op
/// agent fails (exact_match on a command's output); an infeasible task passes when the
/// agent gives up and fails when it claims success; Chrome's tabs opened by a setup step are
/// what OSWorld's getter reads; a Calc-style task (downloads from the import cache,
/// compare_table against a cached expected file) passes with its oracle, fails without, and
/// is an error, not a failure, when the metric raises; and a graded episode is graded
/// again from its snapshot after the desktop is gone.
#[tokio::test(flavor = "multi_thread")]
async fn osworld_tasks_run_on_the_office_desktop_graded_by_osworlds_own_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let folder = json!({
        "id": "b6781586-6346-41cd-935a-a6b1487918fc",
        "snapshot": "os",
        "instruction": "Create a folder named 'reports' in the home directory, using the terminal.",
        "source": "https://www.example.com/osworld-style",
        "config": [
            {"type": "execute", "parameters": {"command": ["python", "-c", "import pyautogui, pathlib; pathlib.Path('/home/user/seed.txt').write_text(str(pyautogui.size()))"]}},
            {"type": "launch", "parameters": {"command": ["gnome-terminal"]}},
            {"type": "sleep", "parameters": {"seconds": 0.5}}
        ],
        "trajectory": "trajectories/",
        "related_apps": ["os"],
        "evaluator": {
            "func": "exact_match",
            "result": {"type": "vm_command_line", "command": "[ -d /home/user/reports ] && echo yes || echo no", "shell": true},
            "expected": {"type": "rule", "rules": {"expected": "yes\n"}}
        }
    });
    let tabs = json!({
        "id": "06fe7178-4491-4589-810f-2e2bc9502122",
        "snapshot": "chrome",
        "instruction": "Keep the page about this machine open.",
        "source": "",
        "config": [
            {"type": "launch", "parameters": {"command": ["google-chrome", "--remote-debugging-port=1337"]}},
            {"type": "launch", "parameters": {"command": ["socat", "tcp-listen:9222,fork", "tcp:localhost:1337"]}},
            {"type": "chrome_open_tabs", "parameters": {"urls_to_open": ["file:///etc/os-release"]}}
        ],
        "trajectory": "trajectories/",
        "related_apps": ["chrome"],
        "evaluator": {
            "func": "is_expected_tabs",
            "result": {"type": "open_tabs_info"},
            "expected": {"type": "rule", "rules": {"type": "url", "urls": ["file:///etc/os-release"]}}
        }
    });
    let infeasible = json!({
        "id": "f5c13cdd-205c-4719-a562-348ae5cd1d91",
        "snapshot": "os",
        "instruction": "Make my monitor refresh at 240 Hz.",
        "source": "",
        "config": [],
        "trajectory": "trajectories/",
        "related_apps": ["os"],
        "evaluator": {"func": "infeasible"}
    });
    let total = |id: &str, gold: &str| {
        json!({
            "id": id,
            "snapshot": "libreoffice_calc",
            "instruction": "Put 42 next to 'total' in in.xlsx and save it as out.xlsx.",
            "source": "",
            "config": [
                {"type": "download", "parameters": {"files": [{"url": "https://example.invalid/in.xlsx", "path": "/home/user/in.xlsx"}]}}
            ],
            "trajectory": "trajectories/",
            "related_apps": ["libreoffice_calc"],
            "evaluator": {
                "func": "compare_table",
                "result": {"type": "vm_file", "path": "/home/user/out.xlsx", "dest": "out.xlsx"},
                "expected": {"type": "cloud_file", "path": gold, "dest": "gold.xlsx"},
                "options": {"rules": [{"type": "sheet_data", "sheet_idx0": 0, "sheet_idx1": "EI0"}]}
            }
        })
    };
    let calc = total("calc-total", "https://example.invalid/gold.xlsx");
    let broken = total(
        "calc-total-broken-gold",
        "https://example.invalid/broken.xlsx",
    );
    let file = home.join("osworld.json");
    std::fs::write(
        &file,
        json!([folder, tabs, infeasible, calc, broken]).to_string(),
    )
    .unwrap();
    let out_dir = home.join("imported");
    let log = import_osworld(&[&file], &out_dir, home).await;
    assert!(log.contains("5 converted, 0 skipped"), "{log}");

    // The import cache, as `--fetch` fills it, with stand-in files.
    let workbook = |cells: &str| {
        format!("import openpyxl; wb = openpyxl.Workbook(); ws = wb.active; {cells}; wb.save(OUT)")
    };
    let input = made_in_office_image("in.xlsx", &workbook("ws['A1'] = 'total'")).await;
    let gold =
        made_in_office_image("gold.xlsx", &workbook("ws['A1'] = 'total'; ws['B1'] = 42")).await;
    let cached = |url: &str, name: &str, data: &[u8]| {
        let path = out_dir.join(selfagent::task::osworld::cache_path(url, name));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    };
    cached(
        "https://example.invalid/in.xlsx",
        "/home/user/in.xlsx",
        &input,
    );
    cached("https://example.invalid/gold.xlsx", "gold.xlsx", &gold);
    cached(
        "https://example.invalid/broken.xlsx",
        "gold.xlsx",
        b"not a spreadsheet",
    );
    // The oracle of the Calc task: what a solution leaves, made after the agent (a no-op).
    let oracle = "[[post]]\nexec = \"/opt/osworld/bin/python -c 'import openpyxl; wb = openpyxl.load_workbook(\\\"/home/user/in.xlsx\\\"); wb.active[\\\"B1\\\"] = 42; wb.save(\\\"/home/user/out.xlsx\\\")'\"\n";
    let imported = |id: &str| out_dir.join(format!("{id}.toml"));
    let with_oracle = |id: &str| {
        let path = out_dir.join(format!("{id}-solved.toml"));
        std::fs::write(
            &path,
            std::fs::read_to_string(imported(id))
                .unwrap()
                .replace(&format!("id = \"{id}\""), &format!("id = \"{id}-solved\""))
                .replace("\n[check]", &format!("\n{oracle}\n[check]")),
        )
        .unwrap();
        path
    };
    let solved = with_oracle("calc-total");
    let broken_solved = with_oracle("calc-total-broken-gold");

    let server = ModelServer::routed(
        vec![
            route(
                "folder named 'reports'",
                vec![typed("mkdir ~/reports\n"), answer("Done.")],
            ),
            route(
                "240 Hz",
                vec![call(
                    json!({"action": "fail", "reason": "the virtual screen has no refresh rate"}),
                )],
            ),
        ],
        // Imported tasks carry OSWorld's screen size, and run at it without flags.
        (1920, 1080),
    )
    .await;
    // The no-op agent: it answers at once.
    let noop = ModelServer::routed(vec![route("", vec![answer("Done.")])], (1920, 1080)).await;
    let db = home.join("rec.db");
    let _snapshots = SnapshotsOf(db.clone());
    let run = |id: &str| run_task_file(imported(id), &server, &db, home);
    let run_noop = |id: &str| run_task_file(imported(id), &noop, &db, home);
    // Solved, then a no-op on the same task.
    let ran = run("b6781586-6346-41cd-935a-a6b1487918fc").await;
    assert_eq!(ran.status.code(), Some(0), "{}", text(&ran));
    let ran = run_noop("b6781586-6346-41cd-935a-a6b1487918fc").await;
    assert_ne!(
        ran.status.code(),
        Some(0),
        "a no-op agent passed: {}",
        text(&ran)
    );
    let (_, g) = grade_of(&db, "b6781586-6346-41cd-935a-a6b1487918fc");
    assert_eq!(g.passed, Some(false), "{g:?}");
    // Infeasible: giving up passes, claiming success fails.
    run("f5c13cdd-205c-4719-a562-348ae5cd1d91").await;
    let (_, g) = grade_of(&db, "f5c13cdd-205c-4719-a562-348ae5cd1d91");
    assert_eq!(g.passed, Some(true), "{g:?}");
    run_noop("f5c13cdd-205c-4719-a562-348ae5cd1d91").await;
    let (_, g) = grade_of(&db, "f5c13cdd-205c-4719-a562-348ae5cd1d91");
    assert_eq!(g.passed, Some(false), "{g:?}");
    // Chrome's tabs, read over its debugging port by OSWorld's getter.
    let ran = run_noop("06fe7178-4491-4589-810f-2e2bc9502122").await;
    assert_eq!(ran.status.code(), Some(0), "{}", text(&ran));
    // Calc: the oracle passes, a no-op fails, a metric that raises is an error.
    let ran = run_task_file(solved.clone(), &noop, &db, home).await;
    assert_eq!(ran.status.code(), Some(0), "{}", text(&ran));
    let (solved_session, g) = grade_of(&db, "calc-total-solved");
    let leaf = g.result.as_ref().unwrap();
    assert!(leaf.check.contains("compare_table"), "{g:?}");
    assert!(leaf.detail.contains("compare_table 1"), "{g:?}");
    run_noop("calc-total").await;
    let (_, g) = grade_of(&db, "calc-total");
    assert_eq!(g.passed, Some(false), "{g:?}");
    // The result is there; the expected file is not a spreadsheet: openpyxl raises.
    run_task_file(broken_solved, &noop, &db, home).await;
    let (_, g) = grade_of(&db, "calc-total-broken-gold-solved");
    assert_eq!(g.passed, None, "a raising metric is an error: {g:?}");
    assert!(
        g.error
            .as_deref()
            .unwrap_or_default()
            .contains("OSWorld's evaluator raised"),
        "{g:?}"
    );
    assert!(server.problems().is_empty(), "{:?}", server.problems());
    assert!(noop.problems().is_empty(), "{:?}", noop.problems());

    // Graded again from the snapshot, the desktop long gone.
    let regraded = selfagent(
        &[
            "grade",
            &solved_session,
            "--db",
            db.to_str().unwrap(),
            "--json",
        ],
        home,
    )
    .await;
    assert_eq!(regraded.status.code(), Some(0), "{}", text(&regraded));
    let list: Value = serde_json::from_slice(&regraded.stdout).unwrap();
    assert_eq!(list[0]["after"]["passed"], json!(true), "{list}");
    assert!(
        list[0]["after"]["evidence"]
            .as_str()
            .unwrap()
            .starts_with("snapshot"),
        "{list}"
    );
}

/// The task file `task` with `solution` run after the agent (after its own post steps),
/// as `<id>-solved` in `dir`.
fn write_solved(task: &Path, solution: &[selfagent::task::SetupStep], dir: &Path) -> PathBuf {
    let mut t = selfagent::task::Task::load(task).unwrap();
    t.id = format!("{}-solved", t.id);
    t.post.extend(solution.iter().cloned());
    let path = dir.join(format!("{}.toml", t.id));
    std::fs::write(&path, t.to_toml().unwrap()).unwrap();
    path
}

/// `selfagent batch DIR --no-agent --json ARGS…`: its output and its report.
async fn no_agent_batch(dir: &Path, args: &[&str], db: &Path, home: &Path) -> (Output, Value) {
    let report_dir = home.join(format!(
        "report-{}",
        dir.file_name().unwrap().to_string_lossy()
    ));
    let mut all = vec!["batch", dir.to_str().unwrap(), "--no-agent", "--json"];
    all.extend_from_slice(args);
    all.extend([
        "--db",
        db.to_str().unwrap(),
        "--report",
        report_dir.to_str().unwrap(),
    ]);
    let run = selfagent(&all, home).await;
    let report =
        serde_json::from_slice(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&run)));
    (run, report)
}

#[derive(serde::Deserialize)]
struct Oracle {
    task: String,
    #[serde(default)]
    stand_in: Vec<StandIn>,
    solution: Vec<selfagent::task::SetupStep>,
}

#[derive(serde::Deserialize)]
struct StandIn {
    name: String,
    python: String,
}

/// Real OSWorld tasks (tests/fixtures/osworld-oracles/README.md) across the OS, Chrome,
/// GIMP, VLC, Calc, Writer, Impress and a multi-app task: each passes OSWorld's own metric
/// with its hand-written solution run after a no-op agent, and fails without it
/// (`tasks audit` finds no broken task among them).
#[tokio::test(flavor = "multi_thread")]
async fn osworld_oracles_pass_and_no_op_agents_fail() {
    use selfagent::task::osworld;
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut oracles: Vec<(String, Oracle)> = Vec::new();
    for e in std::fs::read_dir(fixtures.join("osworld-oracles")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            let o: Oracle = toml::from_str(&std::fs::read_to_string(&p).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            oracles.push((p.file_stem().unwrap().to_string_lossy().into_owned(), o));
        }
    }
    oracles.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(oracles.len() >= 12, "{} oracles", oracles.len());
    let files: Vec<PathBuf> = oracles
        .iter()
        .map(|(_, o)| fixtures.join("osworld").join(&o.task))
        .collect();
    let out_dir = home.join("imported");
    let inputs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let log = import_osworld(&inputs, &out_dir, home).await;
    assert!(
        log.contains(&format!("{} converted, 0 skipped", oracles.len())),
        "{log}"
    );

    // The import cache, filled with the stand-ins, made in parallel.
    let mut making = tokio::task::JoinSet::new();
    for ((id, o), file) in oracles.iter().zip(&files) {
        let task: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
        assert_eq!(task["id"], json!(id));
        for (url, rel) in osworld::downloads(&task) {
            let s = o
                .stand_in
                .iter()
                .find(|s| osworld::cache_path(&url, &s.name) == rel)
                .unwrap_or_else(|| panic!("{id}: no stand-in for {rel}"));
            let (name, script, path) = (s.name.clone(), s.python.clone(), out_dir.join(rel));
            making.spawn(async move { (path, made_in_office_image(&name, &script).await) });
        }
    }
    while let Some(made) = making.join_next().await {
        let (path, data) = made.unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    }

    // Each task with its solution after the agent.
    let solved = home.join("solved");
    std::fs::create_dir_all(&solved).unwrap();
    for (id, o) in &oracles {
        write_solved(&out_dir.join(format!("{id}.toml")), &o.solution, &solved);
    }
    let db = home.join("rec.db");
    let _snapshots = SnapshotsOf(db.clone());
    let (run, report) = no_agent_batch(&solved, &["--parallel", "2"], &db, home).await;
    let not_passed: Vec<String> = report["episodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["passed"] != json!(true))
        .map(|e| {
            format!(
                "{}: {} {}",
                e["task_id"], e["harness_error"], e["grade"]["result"]
            )
        })
        .collect();
    assert!(not_passed.is_empty(), "{not_passed:#?}\n{}", text(&run));
    assert_eq!(report["episodes"].as_array().unwrap().len(), oracles.len());

    // Without the solutions, nothing passes.
    let audited = audit(&out_dir, &["--parallel", "2"], &db, home).await;
    let log = text(&audited);
    assert_eq!(audited.status.code(), Some(0), "{log}");
    assert!(
        log.contains(&format!(
            "audit: {n} tasks with the no-op agent: {n} fail as they should, 0 broken",
            n = oracles.len()
        )),
        "{log}"
    );
}

/// `tasks audit` names a task that passes with no action as broken, and exits 1.
#[tokio::test(flavor = "multi_thread")]
async fn the_audit_finds_a_task_that_passes_with_no_action() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let tasks = home.join("tasks");
    std::fs::create_dir_all(&tasks).unwrap();
    std::fs::write(
        tasks.join("already-done.toml"),
        "id = \"already-done\"\ninstruction = \"Make sure /etc/hostname exists.\"\n[check]\nfile = \"/etc/hostname\"\n",
    )
    .unwrap();
    std::fs::write(
        tasks.join("needs-work.toml"),
        "id = \"needs-work\"\ninstruction = \"Create ~/report.txt.\"\n[check]\nfile = \"/home/user/report.txt\"\n",
    )
    .unwrap();
    let db = home.join("rec.db");
    let _snapshots = SnapshotsOf(db.clone());
    let audited = audit(&tasks, &[], &db, home).await;
    let log = text(&audited);
    assert_eq!(audited.status.code(), Some(1), "{log}");
    assert!(log.contains("1 fail as they should, 1 broken"), "{log}");
    assert!(log.contains("broken  already-done"), "{log}");
    // No model was asked anything: the recorded sessions took no step.
    let rec = Db::open(&db).unwrap();
    assert!(rec.task_sessions().unwrap().iter().all(|s| s.steps == 0));
}

/// A plain HTTP server on loopback serving `files` by path; counts the requests.
async fn file_server(
    files: Vec<(&'static str, Vec<u8>)>,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut buf = vec![0u8; 4096];
            let n = conn.read(&mut buf).await.unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]).into_owned();
            let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
            let reply = match files.iter().find(|(p, _)| *p == path) {
                Some((_, body)) => {
                    let mut r = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    )
                    .into_bytes();
                    r.extend_from_slice(body);
                    r
                }
                None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_vec(),
            };
            let _ = conn.write_all(&reply).await;
        }
    });
    (base, hits)
}

/// `--fetch` downloads a task's files (its downloads and its expected files) into the import
/// cache once, and the task uses them from there; without them, the task's setup fails as
/// a harness error that says to fetch.
#[tokio::test(flavor = "multi_thread")]
async fn the_osworld_import_fetches_into_its_cache_and_runs_offline() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let (base, hits) = file_server(vec![
        ("/notes.txt", b"buy milk\n".to_vec()),
        ("/gold.txt", b"buy milk\nbuy bread\n".to_vec()),
    ])
    .await;
    let task = |id: &str, file: &str| {
        json!({
            "id": id,
            "snapshot": "os",
            "instruction": "Add 'buy bread' to notes.txt on the desktop.",
            "source": "",
            "config": [{"type": "download", "parameters": {"files": [{"url": format!("{base}/{file}"), "path": "/home/user/Desktop/notes.txt"}]}}],
            "trajectory": "trajectories/",
            "related_apps": ["os"],
            "evaluator": {
                "func": "compare_text_file",
                "result": {"type": "vm_file", "path": "/home/user/Desktop/notes.txt", "dest": "notes.txt"},
                "expected": {"type": "cloud_file", "path": format!("{base}/gold.txt"), "dest": "notes_gold.txt"}
            }
        })
    };
    let file = home.join("tasks.json");
    std::fs::write(
        &file,
        json!([
            task("fetched", "notes.txt"),
            task("not-there", "missing.txt")
        ])
        .to_string(),
    )
    .unwrap();
    let out_dir = home.join("imported");
    let fetch = |out: PathBuf| {
        let file = file.clone();
        async move {
            selfagent(
                &[
                    "tasks",
                    "import-osworld",
                    file.to_str().unwrap(),
                    "--out",
                    out.to_str().unwrap(),
                    "--fetch",
                ],
                home,
            )
            .await
        }
    };
    let first = fetch(out_dir.clone()).await;
    assert!(first.status.success(), "{}", text(&first));
    assert!(
        text(&first).contains("missing.txt"),
        "the failed fetch is named: {}",
        text(&first)
    );
    // Three files asked for (notes, gold once for both tasks, missing), each once.
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 3);
    let cached = |url: &str, name: &str| {
        out_dir.join(selfagent::task::osworld::cache_path(
            &format!("{base}/{url}"),
            name,
        ))
    };
    assert_eq!(
        std::fs::read(cached("notes.txt", "/home/user/Desktop/notes.txt")).unwrap(),
        b"buy milk\n"
    );
    assert!(cached("gold.txt", "notes_gold.txt").exists());
    // Cached files are not fetched again.
    let again = fetch(out_dir.clone()).await;
    assert!(again.status.success(), "{}", text(&again));
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        4,
        "only the missing one again"
    );

    // The oracle (the line added) passes offline from the cache; the task whose download
    // failed is a harness error that says what to do.
    let solved = home.join("solved");
    std::fs::create_dir_all(&solved).unwrap();
    let solution = [selfagent::task::SetupStep::Exec {
        command: "echo 'buy bread' >> ~/Desktop/notes.txt".into(),
        timeout: None,
    }];
    write_solved(&out_dir.join("fetched.toml"), &solution, &solved);
    std::fs::copy(
        out_dir.join("not-there.toml"),
        solved.join("not-there.toml"),
    )
    .unwrap();
    let db = home.join("rec.db");
    let _snapshots = SnapshotsOf(db.clone());
    let (run, report) = no_agent_batch(&solved, &["--no-network"], &db, home).await;
    assert_eq!(run.status.code(), Some(4), "{}", text(&run));
    let episode = |id: &str| {
        report["episodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["task_id"] == id)
            .cloned()
            .unwrap()
    };
    assert_eq!(episode("fetched-solved")["passed"], json!(true), "{report}");
    let harness = episode("not-there")["harness_error"].to_string();
    assert!(harness.contains("--fetch"), "{harness}");
}

/// The importer's lists of OSWorld metrics and getters are what the office image loads.
#[tokio::test]
async fn the_importers_osworld_lists_are_what_the_office_image_loads() {
    let out = office_python(&[], &["-I", "/opt/selfagent/osworld/evaluate.py", "--list"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["failed"], json!([]), "{v}");
    let lines = |name: &str| -> Vec<String> {
        std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("src/task")
                .join(name),
        )
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
    };
    let names = |k: &str, strip: &str| -> Vec<String> {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap().trim_start_matches(strip).to_owned())
            .collect()
    };
    assert_eq!(lines("osworld-metrics.txt"), names("metrics", ""));
    assert_eq!(lines("osworld-getters.txt"), names("getters", "get_"));
}

/// SIGTERM (as Ctrl-C) during a batch: the running episode stops after its current action,
/// no new one starts, the reports cover what finished (the stopped episode as `stopped`,
/// not failed, outside the pass rate), and nothing recorded is lost.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_a_batch_and_keeps_what_finished() {
    use tokio::io::AsyncBufReadExt;
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let db = home.join("rec.db");
    let _snapshots = SnapshotsOf(db.clone());
    let report = home.join("report");
    let slow = |r: Reply| Reply::Slow(std::time::Duration::from_millis(400), Box::new(r));
    let wait = || slow(call(json!({"action": "wait", "duration": 0.2})));
    let server = ModelServer::routed(
        vec![
            route(
                "directory named 'reports'",
                vec![slow(typed("mkdir ~/reports\n"))],
            ),
            // Long enough to be interrupted.
            route("hello from selfagent", (0..40).map(|_| wait()).collect()),
        ],
        (1280, 800),
    )
    .await;
    let mut child = tokio::process::Command::new(bin())
        .args([
            "batch",
            tasks_dir().join("terminal-mkdir.toml").to_str().unwrap(),
            tasks_dir()
                .join("terminal-write-file.toml")
                .to_str()
                .unwrap(),
            tasks_dir().join("editor-append.toml").to_str().unwrap(),
            "--base-url",
            &server.base_url(),
            "--db",
            db.to_str().unwrap(),
            "--report",
            report.to_str().unwrap(),
        ])
        .env_remove("OPENAI_BASE_URL")
        .env_remove("SELFAGENT_DB")
        .env("HOME", home)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    // The first episode finishes; the second is running once the model has been asked twice.
    tokio::time::timeout(std::time::Duration::from_secs(120), async {
        while let Some(l) = lines.next_line().await.unwrap() {
            let first_done = l.starts_with("PASS") || l.starts_with("FAIL");
            seen.push(l);
            if first_done {
                break;
            }
        }
        eventually(
            "both episodes to send the model the typed text",
            std::time::Duration::from_secs(120),
            || {
                let n = server
                    .requests()
                    .iter()
                    .filter(|r| r.to_string().contains("hello from selfagent"))
                    .count();
                async move { check(n >= 2, || format!("{n} of them did")) }
            },
        )
        .await;
    })
    .await
    .unwrap_or_else(|_| panic!("the batch did not get going: {seen:?}"));
    let pid = child.id().unwrap();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let rest = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        while let Some(l) = lines.next_line().await.unwrap() {
            seen.push(l);
        }
        child.wait().await.unwrap()
    })
    .await
    .expect("the batch stops after Ctrl-C");
    assert_eq!(rest.code(), Some(130), "{seen:#?}");
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("report.json")).unwrap())
            .unwrap();
    let eps = r["episodes"].as_array().unwrap();
    assert_eq!(r["batch"]["stopped"], true);
    assert_eq!(
        (eps.len(), r["batch"]["not_run"].as_u64()),
        (2, Some(1)),
        "{r:#}"
    );
    let by_task = |t: &str| eps.iter().find(|e| e["task_id"] == t).unwrap().clone();
    assert_eq!(by_task("terminal-mkdir")["passed"], true);
    let stopped = by_task("terminal-write-file");
    assert_eq!(
        (stopped["status"].as_str(), stopped["ended_by"].as_str()),
        (Some("stopped"), Some("user")),
        "{stopped:#}"
    );
    assert_eq!(
        (
            r["passed"].as_u64(),
            r["failed"].as_u64(),
            r["stopped"].as_u64()
        ),
        (Some(1), Some(0), Some(1)),
        "{r:#}"
    );
    let summary = r["summary"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["task_id"] == "terminal-write-file")
        .unwrap();
    assert_eq!(
        (summary["stopped"].as_u64(), &summary["pass_rate"]),
        (Some(1), &json!(null)),
        "a stopped episode is not in the pass rate: {summary:#}"
    );
    let rec = Db::open(&db).unwrap();
    let sessions = rec.task_sessions().unwrap();
    assert_eq!(
        sessions.len(),
        2,
        "no session for the episode that never started"
    );
    let s = rec
        .session(stopped["session_id"].as_str().unwrap())
        .unwrap();
    assert_eq!(s.status, "stopped");
    assert!(s.steps >= 1 && rec.steps(&s.id).unwrap().len() as i64 == s.steps);
    assert!(junit_has(&report, "skipped=\"2\""));
    assert!(junit_has(&report, "stopped by the user"));

    // Resumed: the graded episode is kept, the stopped one runs again (named as redone),
    // the one never started runs; each task once.
    let resumed = tokio::process::Command::new(bin())
        .args(["batch", "--resume", report.to_str().unwrap()])
        .env_remove("OPENAI_BASE_URL")
        .env_remove("SELFAGENT_DB")
        .env("HOME", home)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let log = text(&resumed);
    assert_eq!(resumed.status.code(), Some(0), "{log}");
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("report.json")).unwrap())
            .unwrap();
    let eps = r["episodes"].as_array().unwrap();
    let tasks: Vec<&str> = eps.iter().map(|e| e["task_id"].as_str().unwrap()).collect();
    assert_eq!(
        tasks,
        ["editor-append", "terminal-mkdir", "terminal-write-file"],
        "{log}"
    );
    let again = |t: &str| eps.iter().find(|e| e["task_id"] == t).unwrap().clone();
    assert_eq!(
        again("terminal-mkdir")["session_id"],
        by_task("terminal-mkdir")["session_id"],
        "the graded episode is kept"
    );
    let redone = again("terminal-write-file");
    assert_eq!(redone["redone"], stopped["session_id"], "{redone:#}");
    assert_ne!(redone["status"], "stopped", "{redone:#}");
    assert_eq!(
        (
            r["stopped"].as_u64(),
            r["batch"]["not_run"].as_u64(),
            r["batch"]["stopped"].as_bool()
        ),
        (Some(0), Some(0), Some(false)),
        "{r:#}"
    );
}

fn junit_has(report: &Path, needle: &str) -> bool {
    std::fs::read_to_string(report.join("junit.xml"))
        .unwrap()
        .contains(needle)
}

/// Bad task files, tasks without checks, sessions without a task, and a damaged recording
/// are clear errors, before any desktop starts.
#[tokio::test(flavor = "multi_thread")]
async fn bad_input_to_the_evaluation_commands_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let bad = home.join("bad.toml");
    std::fs::write(
        &bad,
        "id = \"x\"\ninstruction = \"do it\"\n[check]\nfile = \"~/a\"\nexists = \"yes\"\n",
    )
    .unwrap();
    let unchecked = home.join("unchecked.toml");
    std::fs::write(&unchecked, "id = \"no-checks\"\ninstruction = \"do it\"\n").unwrap();

    let out = selfagent(&["tasks", "check", bad.to_str().unwrap()], home).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("bad.toml: line 5, column"),
        "{}",
        text(&out)
    );

    let out = selfagent(
        &[
            "batch",
            bad.to_str().unwrap(),
            "--base-url",
            "http://127.0.0.1:9/v1",
        ],
        home,
    )
    .await;
    assert!(text(&out).contains("bad.toml: line 5"), "{}", text(&out));
    let out = selfagent(
        &[
            "batch",
            unchecked.to_str().unwrap(),
            "--base-url",
            "http://127.0.0.1:9/v1",
        ],
        home,
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("no [check]: no-checks"),
        "{}",
        text(&out)
    );

    // A session recorded without a task cannot be re-graded from its recording alone.
    let db = home.join("rec.db");
    let _snapshots = SnapshotsOf(db.clone());
    drop(Db::open(&db).unwrap());
    let out = selfagent(&["grade", "nope", "--db", db.to_str().unwrap()], home).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("nope"), "{}", text(&out));

    let junk = home.join("junk.db");
    std::fs::write(&junk, b"this is not a database, and must stay as it is").unwrap();
    for args in [
        vec!["export", "x", "--html", "--db", junk.to_str().unwrap()],
        vec!["grade", "--all", "--db", junk.to_str().unwrap()],
    ] {
        let out = selfagent(&args, home).await;
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(text(&out).contains("junk.db"), "{}", text(&out));
    }
    assert_eq!(
        std::fs::read(&junk).unwrap(),
        b"this is not a database, and must stay as it is"
    );
}

/// `batch --max-total-cost`: once the finished episodes cost that much, no new one starts;
/// the batch says why and exits 3. The price comes from the config's `[prices]`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_stops_at_its_cost_limit() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let db = home.join("rec.db");
    let _snapshots = SnapshotsOf(db.clone());
    let report = home.join("report");
    let task = home.join("cheap.toml");
    std::fs::write(
        &task,
        "id = \"cheap\"\ninstruction = \"say the cost-limit word\"\n[check]\ncommand = \"echo ok\"\nstdout = \"ok\"\n",
    )
    .unwrap();
    let config = home.join("config.toml");
    // One reply is 100 tokens in: $0.10 at $1000 per million.
    std::fs::write(&config, "[prices.scripted]\ninput = 1000.0\noutput = 0.0\n").unwrap();
    let server = ModelServer::routed(
        vec![route("cost-limit word", vec![answer("the word")])],
        (1280, 800),
    )
    .await;
    let out = batch(
        &[
            task.to_str().unwrap(),
            "--repeat",
            "3",
            "--max-total-cost",
            "0.1",
            "--config",
            config.to_str().unwrap(),
            "--no-snapshot",
        ],
        &server,
        &db,
        &report,
        home,
    )
    .await;
    let log = text(&out);
    assert_eq!(out.status.code(), Some(3), "{log}");
    assert!(
        log.contains("the batch's cost limit ($0.10) was reached ($0.10 spent)"),
        "{log}"
    );
    assert!(
        log.contains("2 not run (the cost limit was reached)"),
        "{log}"
    );
    assert!(log.contains("cost $0.10"), "{log}");
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("report.json")).unwrap())
            .unwrap();
    assert_eq!(json["batch"]["over_budget"], true);
    assert_eq!(json["batch"]["finished"], 1);
    assert!(
        (json["cost"].as_f64().unwrap() - 0.1).abs() < 1e-9,
        "{json}"
    );
}

/// `tasks import-osworld DIR` over OSWorld's layout (`<app>/<id>.json`, real task files):
/// converted and skipped per app and per reason, printed and in coverage.json; tasks that
/// sign in to a Google account are counted apart, out of the percentage.
#[tokio::test]
async fn the_osworld_import_reports_its_coverage_by_app_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let out_dir = home.join("imported");
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/osworld");
    let log = import_osworld(&[&fixtures], &out_dir, home).await;
    assert!(log.contains("coverage by app"), "{log}");
    let cov: Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("coverage.json")).unwrap())
            .unwrap();
    assert_eq!(cov["tasks"], 18, "{cov}");
    assert_eq!(cov["needs_account"], 1, "{cov}");
    assert_eq!(cov["considered"], 17, "{cov}");
    assert_eq!(cov["converted"], 15, "{cov}");
    assert_eq!(cov["by_app"]["os"]["tasks"], 3, "{cov}");
    assert_eq!(cov["by_app"]["os"]["converted"], 1, "{cov}");
    assert_eq!(cov["by_app"]["multi_apps"]["needs_account"], 1, "{cov}");
    assert_eq!(cov["by_app"]["vlc"]["converted"], 2, "{cov}");
    let reasons = cov["by_reason"].as_object().unwrap();
    assert_eq!(reasons["needs a Google account"], 1, "{cov}");
    assert_eq!(reasons["the evaluator has no `func`"], 1, "{cov}");
    assert_eq!(
        reasons["needs GNOME's settings store, which the office image does not have"], 1,
        "{cov}"
    );
    let listed = cov["tasks_list"].as_array().unwrap();
    assert_eq!(listed.len(), 18);
    assert!(
        listed
            .iter()
            .all(|t| t["app"].is_string() && t["id"].is_string())
    );
}

/// A task that needs sudo runs only with --allow-sudo, on the desktop that grants it (a
/// setup step makes a root-owned file with OSWorld's password); everywhere else sudo raises
/// nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_sudo_task_runs_only_when_allowed_and_only_there_sudo_works() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let db = home.join("rec.db");
    let _snapshots = SnapshotsOf(db.clone());
    let write = |name: &str, text: &str| {
        let path = home.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let sudo_task = write(
        "sudo.toml",
        "id = \"sudo-made\"\ninstruction = \"Answer done (sudo).\"\nsudo = true\n\
         [[setup]]\nexec = \"echo password | sudo -S sh -c 'echo made > /opt/made-by-root'\"\n\
         [check]\ncommand = \"stat -c %U /opt/made-by-root\"\nstdout = \"^root$\"\n",
    );
    let plain_task = write(
        "plain.toml",
        "id = \"sudo-denied\"\ninstruction = \"Answer done (plain).\"\n\
         [check]\ncommand = \"echo password | sudo -S id -u\"\nstdout = \"^0$\"\n",
    );
    let server = ModelServer::routed(
        vec![
            route("(sudo)", vec![answer("done")]),
            route("(plain)", vec![answer("done")]),
        ],
        (1280, 800),
    )
    .await;
    let url = server.base_url();
    let run = |task: &Path, allow: bool| {
        let mut args = vec![
            "run".to_owned(),
            "--headless".into(),
            "--task".into(),
            task.display().to_string(),
            "--base-url".into(),
            url.clone(),
            "--db".into(),
            db.display().to_string(),
        ];
        if allow {
            args.push("--allow-sudo".into());
        }
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            selfagent(&args, home).await
        }
    };
    let refused = run(&sudo_task, false).await;
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(
        text(&refused).contains("sudo-made needs sudo") && text(&refused).contains("--allow-sudo"),
        "{}",
        text(&refused)
    );
    assert!(
        server.requests().is_empty(),
        "refused before any desktop or model call"
    );

    let allowed = run(&sudo_task, true).await;
    assert_eq!(allowed.status.code(), Some(0), "{}", text(&allowed));
    // An ordinary desktop, even with the flag: no sudoers entry, and no-new-privileges.
    let plain = run(&plain_task, true).await;
    assert_eq!(plain.status.code(), Some(2), "{}", text(&plain));
    let rec = Db::open_read(&db).unwrap();
    let sessions = rec.task_sessions().unwrap();
    let made = sessions
        .iter()
        .find(|s| s.task_id.as_deref() == Some("sudo-made"))
        .unwrap();
    assert_eq!(made.meta["task"]["sudo"], true, "the recording names it");
    assert!(server.problems().is_empty(), "{:?}", server.problems());
}

/// VS Code on the office desktop, as OSWorld's vs_code tasks use it: `code FILE` opens the
/// file in a window titled "FILE - Visual Studio Code" (class Code); keys typed by the model
/// edit it and ctrl+s saves it, which OSWorld's own `compare_text_file` grades against a gold
/// file; `code --list-extensions` answers from ~/.vscode/extensions, as OSWorld's
/// `is_extension_installed` reads it. A wrong edit fails the same check.
#[tokio::test(flavor = "multi_thread")]
async fn vs_code_edits_and_saves_a_file_that_osworld_grades() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let db = home.join("rec.db");
    let _snapshots = SnapshotsOf(db.clone());
    let task = |id: &str, gold: &str| {
        let path = home.join(format!("{id}.toml"));
        std::fs::write(
            &path,
            format!(
                "id = \"{id}\"\ninstruction = \"Indent line 2 by one level ({id}).\"\n\
                 desktop = \"office\"\n\
                 [[setup]]\nexec = \"mkdir -p ~/Desktop && printf 'a = 1\\\\nb = 2\\\\n' > ~/Desktop/test.py \
                 && printf '{gold}' > ~/gold.py\"\n\
                 [[setup]]\nlaunch = \"code /home/user/Desktop/test.py\"\n\
                 [[setup]]\nwait_for_window = {{ title = \"^test.py - Visual Studio Code$\", timeout = 90 }}\n\
                 [[setup]]\nexec = \"until grep -qs 'Eager extensions activated' \
                 ~/.config/Code/logs/*/exthost1/remoteexthost.log; do sleep 0.2; done\"\ntimeout = 90\n\
                 [check.osworld]\nfunc = \"compare_text_file\"\n\
                 [check.osworld.result]\ntype = \"vm_file\"\npath = \"/home/user/Desktop/test.py\"\ndest = \"test.py\"\n\
                 [check.osworld.expected]\ntype = \"vm_file\"\npath = \"/home/user/gold.py\"\ndest = \"gold.py\"\n"
            ),
        )
        .unwrap();
        path
    };
    let right = task("vscode-indent", "a = 1\\\\n    b = 2\\\\n");
    let wrong = task("vscode-wrong", "a = 1\\\\n        b = 2\\\\n");
    let edit = || {
        vec![
            key("ctrl+End"),
            key("Up"),
            key("Home"),
            key("Tab"),
            key("ctrl+s"),
            answer("done"),
        ]
    };
    let server = ModelServer::routed(
        vec![
            route("(vscode-indent)", edit()),
            route("(vscode-wrong)", edit()),
        ],
        (1280, 800),
    )
    .await;
    let run = |task: PathBuf| {
        let (db, url) = (db.clone(), server.base_url());
        async move {
            selfagent(
                &[
                    "run",
                    "--headless",
                    "--task",
                    task.to_str().unwrap(),
                    "--base-url",
                    &url,
                    "--db",
                    db.to_str().unwrap(),
                ],
                home,
            )
            .await
        }
    };
    let passed = run(right).await;
    assert_eq!(passed.status.code(), Some(0), "{}", text(&passed));
    let failed = run(wrong).await;
    assert_eq!(failed.status.code(), Some(2), "{}", text(&failed));
    assert!(server.problems().is_empty(), "{:?}", server.problems());

    let d = crate::common::desktop_with(selfagent::sandbox::SandboxSpec {
        image: "selfagent-desktop:office".into(),
        ..crate::common::test_spec()
    })
    .await;
    let listed = d.sh("code --list-extensions && echo listed").await;
    assert_eq!(listed.trim(), "listed");
    let version = d.sh("code --version").await;
    assert!(version.contains("with Code 1."), "{version}");
}

/// OSWorld's `vscode_config` getter as its vs_code tasks use it: the task installs an
/// evaluation extension from a `.vsix` (`code --install-extension`), and at grading the getter
/// types the extension's command into VS Code's command palette (pyautogui, as OSWorld's
/// getter does) and reads the file the command wrote, here the workspace's folder, which
/// `compare_config` compares. With the project open it passes; with VS Code open on no
/// folder the same check fails. (The agent here answers at once, so the setup waits for the
/// evidence that VS Code's extension host is up, its log's "Eager extensions activated":
/// before that the palette does not list the extension's command yet.)
#[tokio::test(flavor = "multi_thread")]
async fn vs_code_is_graded_through_its_command_palette_as_osworld_does() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let db = home.join("rec.db");
    let _snapshots = SnapshotsOf(db.clone());
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vscode-eval");
    let zipped = std::process::Command::new("python3")
        .args(["-m", "zipfile", "-c"])
        .arg(home.join("eval.vsix"))
        .args(["[Content_Types].xml", "extension.vsixmanifest", "extension"])
        .current_dir(&fixture)
        .status()
        .unwrap();
    assert!(zipped.success());
    let task = |id: &str, open: &str, title: &str| {
        let path = home.join(format!("{id}.toml"));
        std::fs::write(
            &path,
            format!(
                "id = \"{id}\"\ninstruction = \"Open the project in VS Code ({id}).\"\n\
                 desktop = \"office\"\n\
                 [[setup]]\nupload = {{ from = \"eval.vsix\", to = \"/home/user/eval.vsix\" }}\n\
                 [[setup]]\nexec = \"code --install-extension /home/user/eval.vsix && mkdir -p /home/user/project\"\n\
                 [[setup]]\nlaunch = \"code {open}\"\n\
                 [[setup]]\nwait_for_window = {{ title = \"{title}\", timeout = 90 }}\n\
                 [[setup]]\nexec = \"until grep -qs 'Eager extensions activated' \
                 ~/.config/Code/logs/*/exthost1/remoteexthost.log; do sleep 0.2; done\"\ntimeout = 90\n\
                 [check.osworld]\nfunc = \"compare_config\"\n\
                 [check.osworld.result]\ntype = \"vscode_config\"\nvscode_extension_command = \"OpenProject\"\n\
                 path = \"/home/user/OpenProject.txt\"\ndest = \"OpenProject.txt\"\n\
                 [check.osworld.expected]\ntype = \"rule\"\n\
                 [check.osworld.expected.rules]\nexpected = \"/home/user/project\"\n"
            ),
        )
        .unwrap();
        path
    };
    let opened = task(
        "vscode-project-open",
        "/home/user/project",
        "^project - Visual Studio Code$",
    );
    let empty = task("vscode-project-closed", "", "Visual Studio Code$");
    let server = ModelServer::routed(vec![route("", vec![answer("Done.")])], (1280, 800)).await;
    let run = |task: PathBuf| run_task_file(task, &server, &db, home);
    let passed = run(opened).await;
    assert_eq!(passed.status.code(), Some(0), "{}", text(&passed));
    let failed = run(empty).await;
    assert_eq!(failed.status.code(), Some(2), "{}", text(&failed));
    assert!(server.problems().is_empty(), "{:?}", server.problems());
}

/// OSWorld's evaluator run inside `d` (as the harness runs it, as root) on `evaluator`;
/// its score, or the error it printed.
async fn evaluate_inside(d: &crate::common::TestDesktop, evaluator: Value) -> Result<f64, String> {
    let request = json!({"evaluator": evaluator, "files": {}}).to_string();
    let out = d
        .sandbox
        .exec(
            &[
                "/opt/osworld/bin/python",
                "-I",
                "/opt/selfagent/osworld/evaluate.py",
            ],
            &selfagent::sandbox::ExecOptions {
                user: Some("root".into()),
                stdin: Some(request.into_bytes()),
                timeout: Some(std::time::Duration::from_secs(120)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let line = out.stdout_text();
    let v: Value = serde_json::from_str(line.trim().lines().last().unwrap_or("null"))
        .map_err(|e| format!("{e}: {line} {}", out.stderr_text()))?;
    v["score"]
        .as_f64()
        .ok_or_else(|| format!("{v} {}", out.stderr_text()))
}

/// Waits until OSWorld's evaluator scores `evaluator` 1 inside `d` (what it reads may
/// still be starting).
async fn passes_eventually(
    d: &crate::common::TestDesktop,
    what: &str,
    evaluator: Value,
    secs: u64,
) {
    eventually(what, std::time::Duration::from_secs(secs), || {
        let evaluator = evaluator.clone();
        async move {
            let score = evaluate_inside(d, evaluator).await;
            check(score == Ok(1.0), || format!("{score:?}"))
        }
    })
    .await;
}

/// `sandbox a11y` on an office desktop with the text editor open lists its menus and its
/// text area with positions (OSWorld's linearized form), `--xml` has its window; OSWorld's
/// own getters read the same tree (`accessibility_tree` graded by its
/// `check_accessibility_tree`, which fails on other text), a terminal's text
/// (`vm_terminal_output`) and Chromium's address bar (`active_url_from_accessTree`); a
/// desktop without AT-SPI says which one has it.
#[tokio::test(flavor = "multi_thread")]
async fn the_accessibility_tree_is_served_as_osworld_reads_it() {
    use selfagent::action::Action;
    let d = crate::common::desktop_with(selfagent::sandbox::SandboxSpec {
        image: selfagent::sandbox::image::OFFICE_IMAGE.into(),
        ..crate::common::test_spec()
    })
    .await;
    let id = d.sandbox.id().to_owned();
    d.open_window("mousepad", "Mousepad").await;
    d.act_changing(Action::Type {
        text: "hello a11y".into(),
    })
    .await;
    let rows: Vec<Value> = eventually(
        "the typed text in the tree",
        std::time::Duration::from_secs(30),
        || {
            let id = id.clone();
            async move {
                let out = crate::common::cli(&["sandbox", "a11y", &id, "--json"]);
                let rows: Vec<Value> = serde_json::from_slice(&out.stdout)
                    .map_err(|e| format!("{e}: {}", crate::common::stderr(&out)))?;
                check(
                    rows.iter()
                        .any(|r| r["tag"] == "text" && r["text"] == "hello a11y"),
                    || format!("{rows:?}"),
                )
                .map(|()| rows)
            }
        },
    )
    .await;
    for menu in ["File", "Edit", "Help"] {
        let m = rows
            .iter()
            .find(|r| r["tag"] == "menu" && r["name"] == menu)
            .unwrap_or_else(|| panic!("no {menu} menu: {rows:?}"));
        assert!(m["position"][0].as_i64().unwrap() >= 0, "{m}");
        assert!(m["size"][0].as_i64().unwrap() > 0, "{m}");
    }
    let area = rows.iter().find(|r| r["tag"] == "text").unwrap();
    assert!(
        area["size"][0].as_i64().unwrap() > 200 && area["size"][1].as_i64().unwrap() > 100,
        "the text area: {area}"
    );
    let text = crate::common::stdout(&crate::common::cli(&["sandbox", "a11y", &id]));
    assert!(
        text.starts_with(
            "tag\tname\ttext\tclass\tdescription\tposition (top-left x&y)\tsize (w&h)\n"
        ),
        "{text}"
    );
    let xml = crate::common::stdout(&crate::common::cli(&["sandbox", "a11y", &id, "--xml"]));
    assert!(
        xml.starts_with("<desktop-frame") && xml.contains("Mousepad\"") && xml.contains("<frame "),
        "{}",
        &xml[..xml.len().min(2000)]
    );

    // OSWorld's own getter and metric on the same tree: the text passes, other text fails.
    let tree_check = |text: &str| {
        json!({
            "func": "check_accessibility_tree",
            "result": {"type": "accessibility_tree"},
            "expected": {"type": "rule", "rules": [
                {"xpath": "//text[@st:editable='true']", "text": text, "exact": true}
            ]}
        })
    };
    assert_eq!(evaluate_inside(&d, tree_check("hello a11y")).await, Ok(1.0));
    assert_eq!(
        evaluate_inside(&d, tree_check("something else")).await,
        Ok(0.0)
    );

    // A terminal's text.
    d.terminal("a11yterm", Some("echo a11y-marker-42; exec sh"))
        .await;
    let terminal = json!({
        "func": "check_include_exclude",
        "result": {"type": "vm_terminal_output"},
        "expected": {"type": "rule", "rules": {"include": ["a11y-marker-42"], "exclude": []}}
    });
    passes_eventually(&d, "the terminal's text through the tree", terminal, 30).await;

    // Chromium's address bar, named as OSWorld's getter looks for Google Chrome's.
    d.sandbox.spawn("google-chrome about:blank").await.unwrap();
    let url = json!({
        "func": "exact_match",
        "result": {"type": "active_url_from_accessTree", "goto_prefix": ""},
        "expected": {"type": "rule", "rules": {"expected": "about:blank"}}
    });
    passes_eventually(&d, "Chromium's address bar through the tree", url, 60).await;

    // The default desktop has no AT-SPI bindings: the error names the one that has.
    let plain = crate::common::desktop().await;
    let out = crate::common::cli(&["sandbox", "a11y", plain.sandbox.id()]);
    assert!(!out.status.success());
    assert!(
        crate::common::stderr(&out).contains("office desktop"),
        "{}",
        crate::common::stderr(&out)
    );
}

/// The header of the linearized tree, as it is escaped in a request's JSON.
const TREE_HEADER: &str =
    "tag\\tname\\ttext\\tclass\\tdescription\\tposition (top-left x&y)\\tsize (w&h)";

/// The rows of the last accessibility tree in a request, each split into its fields.
fn tree_rows(req: &Value) -> Vec<Vec<String>> {
    let all = req.to_string();
    let start = all
        .rfind(TREE_HEADER)
        .unwrap_or_else(|| panic!("no tree: {all}"));
    all[start..]
        .split("\\n")
        .skip(1)
        .take_while(|l| l.contains("\\t"))
        .map(|l| l.split("\\t").map(str::to_owned).collect())
        .collect()
}

/// `--observe screenshot+a11y`: each request carries the screen's accessibility tree beside
/// the screenshot, in OSWorld's linearized form with positions in the model's coordinates
/// (here a screen sent at 1024x640); with --keep-images 1 the older tree is omitted like the
/// older screenshot; what the agent typed shows in the next tree.
#[tokio::test(flavor = "multi_thread")]
async fn a_model_can_observe_the_accessibility_tree() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let db = home.join("rec.db");
    let _snapshots = SnapshotsOf(db.clone());
    let task = home.join("observe.toml");
    std::fs::write(
        &task,
        "id = \"observe-a11y\"\ninstruction = \"Type into the editor (observe).\"\n\
         desktop = \"office\"\n[[setup]]\nlaunch = \"mousepad\"\n\
         [[setup]]\nwait_for_window = { title = \"Mousepad\", timeout = 30 }\n\
         [check]\ncommand = \"true\"\n",
    )
    .unwrap();
    let server = ModelServer::routed(
        vec![route(
            "(observe)",
            vec![typed("hello a11y"), answer("done")],
        )],
        (1024, 640),
    )
    .await;
    let out = selfagent(
        &[
            "run",
            "--headless",
            "--task",
            task.to_str().unwrap(),
            "--observe",
            "screenshot+a11y",
            "--keep-images",
            "1",
            "--scale",
            "1024",
            "--no-snapshot",
            "--base-url",
            &server.base_url(),
            "--db",
            db.to_str().unwrap(),
        ],
        home,
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(server.problems().is_empty(), "{:?}", server.problems());
    let requests = server.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    let rows = tree_rows;
    let first = rows(&requests[0]);
    let file = first
        .iter()
        .find(|r| r[0] == "menu" && r[1] == "File")
        .unwrap_or_else(|| panic!("no File menu: {first:?}"));
    // Positions in the model's 1024x640 space, not the 1280x800 screen's.
    for row in &first {
        let nums: Vec<i64> = row[5]
            .trim_matches(|c| c == '(' || c == ')')
            .split(", ")
            .map(|n| n.parse().unwrap())
            .collect();
        assert!(nums[0] <= 1024 && nums[1] <= 640, "{row:?}");
    }
    assert!(file[6].starts_with('('), "{file:?}");
    let second = requests[1].to_string();
    assert_eq!(
        second.matches(TREE_HEADER).count(),
        1,
        "only the latest tree in full"
    );
    assert!(
        second.contains("[an earlier accessibility tree, omitted]"),
        "{second}"
    );
    assert!(
        rows(&requests[1])
            .iter()
            .any(|r| r[0] == "text" && r[2] == "hello a11y"),
        "the typed text in the next tree: {second}"
    );
}

/// `--observe a11y`, OSWorld's text-only setting: the pyautogui protocol with OSWorld's
/// accessibility-tree prompt and question, no screenshot in any request (the SDK's types
/// judge each), the tree inline with the window's menus, what the model typed in the next
/// tree; the recording still keeps a screenshot of every step for people. A protocol whose
/// model grounds in pixels is refused before any desktop starts, and so is calibrating.
#[tokio::test(flavor = "multi_thread")]
async fn a_model_can_act_from_the_accessibility_tree_alone() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let db = home.join("rec.db");
    let _snapshots = SnapshotsOf(db.clone());
    let task = home.join("tree-alone.toml");
    std::fs::write(
        &task,
        "id = \"tree-alone\"\ninstruction = \"Type into the editor (tree alone).\"\n\
         desktop = \"office\"\n[[setup]]\nlaunch = \"mousepad\"\n\
         [[setup]]\nwait_for_window = { title = \"Mousepad\", timeout = 30 }\n\
         [check]\ncommand = \"true\"\n",
    )
    .unwrap();
    let server = ModelServer::any_protocol(
        vec![
            text_reply("The editor is open.\n```python\npyautogui.typewrite('hello tree')\n```"),
            text_reply("```DONE```"),
        ],
        (1280, 800),
        text_reply("```WAIT```"),
    )
    .await;
    server.expect_no_screenshots();
    let run = |protocol: &'static str| {
        let (task, db, base) = (task.clone(), db.clone(), server.base_url());
        async move {
            selfagent(
                &[
                    "run",
                    "--headless",
                    "--task",
                    task.to_str().unwrap(),
                    "--protocol",
                    protocol,
                    "--observe",
                    "a11y",
                    "--no-snapshot",
                    "--base-url",
                    &base,
                    "--db",
                    db.to_str().unwrap(),
                ],
                home,
            )
            .await
        }
    };
    let refused = run("uitars").await;
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(
        text(&refused).contains("the tree alone is for anthropic, pyautogui, tools"),
        "{}",
        text(&refused)
    );
    let calibrate = selfagent(
        &[
            "calibrate",
            "--observe",
            "a11y",
            "--base-url",
            &server.base_url(),
        ],
        home,
    )
    .await;
    assert_eq!(calibrate.status.code(), Some(1), "{}", text(&calibrate));
    assert!(
        text(&calibrate).contains("shows it none"),
        "{}",
        text(&calibrate)
    );
    let out = run("pyautogui").await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(server.problems().is_empty(), "{:?}", server.problems());
    let requests = server.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    let system = requests[0]["messages"][0]["content"].to_string();
    assert!(
        system.contains("observation of the desktop by accessibility tree"),
        "{system}"
    );
    let question = requests[0]["messages"][1]["content"].to_string();
    assert!(
        question.contains("Given the info from accessibility tree as below:"),
        "{question}"
    );
    let first = tree_rows(&requests[0]);
    assert!(
        first.iter().any(|r| r[0] == "menu" && r[1] == "File"),
        "no File menu: {first:?}"
    );
    assert!(
        tree_rows(&requests[1])
            .iter()
            .any(|r| r[0] == "text" && r[2] == "hello tree"),
        "the typed text in the next tree: {}",
        requests[1]
    );
    let rec = Db::open(&db).unwrap();
    let session = &rec.task_sessions().unwrap()[0];
    let steps = rec.steps(&session.id).unwrap();
    assert_eq!(steps.len(), 2);
    assert!(
        steps.iter().all(|s| s.frame_after.is_some()),
        "every step keeps its screenshot: {steps:?}"
    );
}

/// The importer over the whole 85-task sample of OSWorld's public set
/// (tests/fixtures/osworld-sample): the coverage the README reports, and every task file it
/// writes loads (`tasks check`).
#[tokio::test(flavor = "multi_thread")]
async fn the_whole_osworld_sample_imports_into_tasks_that_load() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let out_dir = home.join("imported");
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/osworld-sample");
    import_osworld(&[&sample], &out_dir, home).await;
    let cov: Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("coverage.json")).unwrap())
            .unwrap();
    assert_eq!(
        (
            cov["tasks"].as_u64(),
            cov["considered"].as_u64(),
            cov["converted"].as_u64()
        ),
        (Some(85), Some(84), Some(76)),
        "the README's table: {cov}"
    );
    let written = std::fs::read_dir(&out_dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "toml")
        })
        .count();
    assert_eq!(written, 76);
    let checked = selfagent(&["tasks", "check", out_dir.to_str().unwrap()], home).await;
    assert_eq!(checked.status.code(), Some(0), "{}", text(&checked));
    assert_eq!(
        String::from_utf8_lossy(&checked.stdout)
            .matches("\nok ")
            .count()
            + 1,
        76,
        "{}",
        text(&checked)
    );
}
