//! `selfagent calibrate` end to end: a real desktop shows the targets (the calibration waits
//! until the screen shows them as drawn), a scripted model clicks them in its own protocol,
//! and the report must say what the clicks really were: on target in the configured space,
//! in another space (named, with the flag to use), or nowhere. `batch --calibrate` must not
//! start a batch on a model whose clicks do not land. Scripted runs test selfagent, not any
//! model.

use super::protocols::{Step, reply, wait};
use crate::common::bin;
use crate::common::model_server::{ModelServer, Reply, anthropic_tool_use};
use selfagent::calibrate::{Target, layout};
use selfagent::record::Db;
use serde_json::{Value, json};
use std::process::Stdio;

const SCREEN: (u32, u32) = (1280, 800);

/// How the scripted model answers a target.
#[derive(Clone, Copy)]
enum Answers {
    /// Pixels of an image of this size, off the centre by (dx, dy) screen pixels.
    Pixels((u32, u32), i32, i32),
    /// 0-1000 of the screen.
    Thousand,
    /// Anywhere at all (a fixed pseudo-random sequence).
    Random,
}

struct Case {
    protocol: &'static str,
    model: &'static str,
    /// The size of the screenshots that model sees.
    sent: (u32, u32),
    answers: Answers,
    /// Ask for a screenshot before each click (as Claude often does).
    look_first: bool,
    verdict: &'static str,
    suggestion: Option<&'static str>,
    exit: i32,
}

fn script(c: &Case, targets: &[Target]) -> Vec<Reply> {
    let mut seed = 0x5eed_u64;
    let mut random = |max: u32| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((seed >> 33) % u64::from(max)) as f64
    };
    let mut out = Vec::new();
    for t in targets {
        let (x, y) = (f64::from(t.x), f64::from(t.y));
        let (sx, sy) = (f64::from(SCREEN.0), f64::from(SCREEN.1));
        let (mx, my) = match c.answers {
            Answers::Pixels((w, h), dx, dy) => (
                ((x + f64::from(dx)) * f64::from(w) / sx).round(),
                ((y + f64::from(dy)) * f64::from(h) / sy).round(),
            ),
            Answers::Thousand => ((x * 1000.0 / sx).round(), (y * 1000.0 / sy).round()),
            Answers::Random => (random(c.sent.0), random(c.sent.1)),
        };
        if c.look_first {
            out.push(anthropic_tool_use(
                Some("Let me look at the screen first."),
                vec![json!({"action": "screenshot"})],
            ));
        }
        out.push(reply(c.protocol, Step::Click(mx, my)));
    }
    out
}

async fn calibrate(c: &Case) -> Result<(Value, String), String> {
    let targets = layout(9, SCREEN);
    let server = ModelServer::any_protocol(script(c, &targets), c.sent, wait(c.protocol)).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("rec.db");
    let base = match c.protocol {
        "anthropic" => server.base_url().trim_end_matches("/v1").to_owned(),
        _ => server.base_url(),
    };
    let out = tokio::process::Command::new(bin())
        .args([
            "calibrate",
            "--json",
            "--base-url",
            &base,
            "--model",
            c.model,
            "--db",
            db.to_str().unwrap(),
        ])
        .env("OPENAI_API_KEY", "sk-test")
        .env("ANTHROPIC_API_KEY", "sk-ant-test")
        .env_remove("OPENAI_BASE_URL")
        .env_remove("SELFAGENT_CONFIG")
        .env("HOME", dir.path())
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let log = format!(
        "{} ({}): exit {:?}\nstdout: {}\nstderr: {}\nproblems: {:?}",
        c.protocol,
        c.model,
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        server.problems()
    );
    let report: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("the report is not JSON ({e}): {log}"))?;
    let fail = |what: String| Err(format!("{what}\n{log}"));
    if !server.problems().is_empty() {
        return fail("the server saw problems".into());
    }
    if out.status.code() != Some(c.exit) {
        return fail(format!("exit code, expected {}", c.exit));
    }
    if report["verdict"] != c.verdict {
        return fail(format!(
            "verdict {}, expected {}",
            report["verdict"], c.verdict
        ));
    }
    if report["suggestion"].as_str() != c.suggestion {
        return fail(format!("suggestion {}", report["suggestion"]));
    }
    if report["protocol"] != c.protocol {
        return fail(format!("protocol {}", report["protocol"]));
    }
    let rows = report["targets"].as_array().cloned().unwrap_or_default();
    if rows.len() != targets.len() {
        return fail(format!("{} targets reported", rows.len()));
    }
    // Recorded like any session: the steps, the clicks, the report; the page was on the
    // screen the model saw.
    let rec = Db::open_read(&db).unwrap();
    let session = report["session"].as_str().unwrap_or_default();
    let s = rec.session(session).map_err(|e| format!("{e}\n{log}"))?;
    if s.task_id.as_deref() != Some("calibrate") || s.protocol.as_deref() != Some(c.protocol) {
        return fail(format!("recorded as {:?} / {:?}", s.task_id, s.protocol));
    }
    let events = rec.events(session).unwrap();
    let recorded = events
        .iter()
        .find(|e| e.kind == "calibration")
        .and_then(|e| serde_json::from_str::<Value>(e.data.as_deref()?).ok());
    if recorded.as_ref().map(|r| &r["verdict"]) != Some(&report["verdict"]) {
        return fail("the recording has no calibration report".into());
    }
    let steps = rec.steps(session).unwrap();
    let turns = if c.look_first { 2 } else { 1 };
    if steps.len() != targets.len() * turns {
        return fail(format!("{} steps recorded", steps.len()));
    }
    let first = rec.frame(steps[0].frame_before.unwrap()).unwrap().unwrap();
    let img = image::load_from_memory(&first.png).unwrap().to_rgb8();
    let t = targets[0];
    let p = img.get_pixel(t.x as u32, (t.y - 15) as u32).0;
    if p[0] < 150 || p[1] > 80 {
        return fail(format!("the first screenshot shows {p:?} at target 1"));
    }
    Ok((report, log))
}

#[tokio::test(flavor = "multi_thread")]
async fn calibrate_measures_clicks_and_names_the_space_that_fits() {
    let cases = [
        // UI-TARS-1.5 in its own space: pixels of the 1288x812 smart-resized image.
        Case {
            protocol: "uitars",
            model: "ByteDance-Seed/UI-TARS-1.5-7B",
            sent: (1288, 812),
            answers: Answers::Pixels((1288, 812), 3, -2),
            look_first: false,
            verdict: "usable",
            suggestion: None,
            exit: 0,
        },
        // Claude looks first, then clicks: two model calls per target.
        Case {
            protocol: "anthropic",
            model: "claude-sonnet-4-5-20250929",
            sent: (1280, 800),
            answers: Answers::Pixels((1280, 800), 0, 0),
            look_first: true,
            verdict: "usable",
            suggestion: None,
            exit: 0,
        },
        // A Qwen2.5-VL id (smart-resize pixels) serving a model that answers 0-1000 (as
        // Qwen3-VL does): some clicks are refused, the rest land far off; 0-1000 fits.
        Case {
            protocol: "qwen",
            model: "Qwen/Qwen2.5-VL-7B-Instruct",
            sent: (1288, 812),
            answers: Answers::Thousand,
            look_first: false,
            verdict: "wrong_space",
            suggestion: Some("--coords 1000"),
            exit: 2,
        },
        // Clicks anywhere fit no space.
        Case {
            protocol: "tools",
            model: "gpt-4o",
            sent: (1280, 800),
            answers: Answers::Random,
            look_first: false,
            verdict: "not_usable",
            suggestion: None,
            exit: 2,
        },
    ];
    let mut failures = Vec::new();
    for c in &cases {
        match calibrate(c).await {
            Err(e) => failures.push(e),
            Ok((report, log)) => {
                let median = report["median_px"].as_f64();
                let ok = match (c.verdict, median) {
                    ("usable", Some(m)) => m <= 4.0,
                    ("usable", None) => false,
                    (_, m) => m.is_none_or(|m| m > 50.0),
                };
                if !ok {
                    failures.push(format!("median {median:?}\n{log}"));
                }
                if c.verdict == "wrong_space" {
                    let best = &report["spaces"][0];
                    if best["coords"] != "1000"
                        || best["median_px"].as_f64().is_none_or(|m| m > 2.0)
                    {
                        failures.push(format!("best space {best}\n{log}"));
                    }
                    let refused = report["targets"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .filter(|t| t["note"].as_str().is_some_and(|n| n.starts_with("refused")))
                        .count();
                    if refused == 0 {
                        failures.push(format!("no click was refused\n{log}"));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// `batch --calibrate` with a model whose clicks land elsewhere: the batch does not start,
/// the reason and the flag to use are said, only the calibration is recorded.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_does_not_start_when_calibration_fails() {
    let c = Case {
        protocol: "tools",
        model: "scripted",
        sent: (1280, 800),
        answers: Answers::Thousand,
        look_first: false,
        verdict: "wrong_space",
        suggestion: Some("--coords 1000"),
        exit: 1,
    };
    let targets = layout(9, SCREEN);
    let server = ModelServer::any_protocol(script(&c, &targets), c.sent, wait(c.protocol)).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("rec.db");
    let tasks = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tasks");
    let out = tokio::process::Command::new(bin())
        .args([
            "batch",
            tasks.to_str().unwrap(),
            "--calibrate",
            "--base-url",
            &server.base_url(),
            "--model",
            c.model,
            "--db",
            db.to_str().unwrap(),
        ])
        .env("OPENAI_API_KEY", "sk-test")
        .env_remove("OPENAI_BASE_URL")
        .env_remove("SELFAGENT_CONFIG")
        .env("HOME", dir.path())
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("the batch was not started"), "{err}");
    assert!(err.contains("use --coords 1000"), "{err}");
    let rec = Db::open_read(&db).unwrap();
    let sessions = rec.sessions(100).unwrap();
    assert_eq!(sessions.len(), 1, "only the calibration ran: {sessions:?}");
    assert_eq!(sessions[0].task_id.as_deref(), Some("calibrate"));
    assert!(server.problems().is_empty(), "{:?}", server.problems());
}
