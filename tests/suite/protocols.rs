//! Every protocol end to end against real desktops, with replies shaped exactly as each
//! model family's (tests/common/model_server.rs): a terminal opened by a key combo, a marker
//! typed into a file, a click at a known point given in the model's own coordinate space.
//! The file must hold the marker and the X pointer (`xdotool getmouselocation`) must be
//! within 2 px of the point, at the default size and at 1920x1080 with downscaling. The
//! protocol and coordinate space are detected from real model ids, and each request's
//! screenshot must be exactly the size that model sees. Scripted runs test selfagent, not
//! any model.

use crate::common::model_server::{
    ModelServer, Reply, answer, anthropic_answer, anthropic_tool_use, anthropic_toolset, call,
    gemini_answer, gemini_calls, responses_answer, responses_call, text_reply,
};
use crate::common::screens::terminal_ready;
use crate::common::{Guard, SnapshotsOf, bin};
use selfagent::record::Db;
use serde_json::{Value, json};
use std::process::Stdio;

/// What a step of the plan is, protocol-neutral.
#[derive(Clone, Copy)]
pub(crate) enum Step<'a> {
    Terminal,
    Type(&'a str),
    /// A click, in the model's coordinates (already converted).
    Click(f64, f64),
    Done,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Space {
    Pixels,
    Thousand,
    /// Thousandths of the screen, 0-999 (GLM).
    NineNineNine,
    Unit,
}

struct Case {
    /// The protocol selfagent must choose.
    protocol: &'static str,
    /// Whose replies the script sends (`reply`'s key: a protocol, or one model family of
    /// it).
    dialect: &'static str,
    model: &'static str,
    /// Flags besides the model (a coordinate space, a scale).
    extra: &'static [&'static str],
    screen: (u32, u32),
    /// The size of the screenshot that model sees (known independently of our code).
    sent: (u32, u32),
    space: Space,
}

/// The model-space coordinates of screen point `p`, as the model would give them.
fn model_xy(c: &Case, p: (u32, u32)) -> (f64, f64) {
    let (sx, sy) = (f64::from(c.screen.0), f64::from(c.screen.1));
    let (x, y) = (f64::from(p.0), f64::from(p.1));
    match c.space {
        Space::Pixels => (
            (x * f64::from(c.sent.0) / sx).round(),
            (y * f64::from(c.sent.1) / sy).round(),
        ),
        Space::Thousand => ((x * 1000.0 / sx).round(), (y * 1000.0 / sy).round()),
        Space::NineNineNine => ((x * 999.0 / sx).round(), (y * 999.0 / sy).round()),
        Space::Unit => (
            (x / sx * 10_000.0).round() / 10_000.0,
            (y / sy * 10_000.0).round() / 10_000.0,
        ),
    }
}

fn num(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// One step as this protocol's model writes it.
pub(crate) fn reply(protocol: &str, step: Step) -> Reply {
    match (protocol, step) {
        ("tools", Step::Terminal) => call(json!({"action": "key", "text": "ctrl+alt+t"})),
        ("tools", Step::Type(t)) => call(json!({"action": "type", "text": t})),
        ("tools", Step::Click(x, y)) => {
            call(json!({"action": "left_click", "coordinate": [x as i64, y as i64]}))
        }
        ("tools", Step::Done) => answer("Done."),
        ("anthropic", Step::Terminal) => anthropic_tool_use(
            Some("I'll open a terminal."),
            vec![json!({"action": "key", "text": "ctrl+alt+t"})],
        ),
        ("anthropic", Step::Type(t)) => {
            anthropic_tool_use(None, vec![json!({"action": "type", "text": t})])
        }
        ("anthropic", Step::Click(x, y)) => anthropic_tool_use(
            None,
            vec![json!({"action": "left_click", "coordinate": [x as i64, y as i64]})],
        ),
        ("anthropic", Step::Done) => anthropic_answer("The marker is written."),
        // Anthropic's computer toolset: batches with `repeat` and `zoom`.
        ("anthropic-toolset", Step::Terminal) => anthropic_toolset(
            Some("I'll open a terminal."),
            vec![("key", json!({"text": "ctrl+alt+t"}))],
        ),
        ("anthropic-toolset", Step::Type(t)) => anthropic_toolset(
            None,
            vec![
                ("type", json!({"text": t.trim_end_matches('\n')})),
                ("key", json!({"text": "Return", "repeat": 2})),
            ],
        ),
        ("anthropic-toolset", Step::Click(x, y)) => anthropic_toolset(
            None,
            vec![
                (
                    "zoom",
                    json!({"region": [x as i64 - 40, y as i64 - 30, x as i64 + 40, y as i64 + 30]}),
                ),
                ("left_click", json!({"coordinate": [x as i64, y as i64]})),
            ],
        ),
        ("anthropic-toolset", Step::Done) => anthropic_answer("The marker is written."),
        // Gemini 3.x, desktop actions with intents; the click asks for a confirmation.
        ("gemini", Step::Terminal) => gemini_calls(
            Some("I will open a terminal."),
            vec![(
                "hotkey",
                json!({"keys": ["Control", "Alt", "t"], "intent": "Open a terminal."}),
            )],
        ),
        ("gemini", Step::Type(t)) => gemini_calls(
            None,
            vec![(
                "type",
                json!({"text": t.trim_end_matches('\n'), "press_enter": true, "intent": "Write the marker."}),
            )],
        ),
        ("gemini", Step::Click(x, y)) => gemini_calls(
            None,
            vec![(
                "click",
                json!({"x": x as i64, "y": y as i64, "intent": "Click the point.",
                       "safety_decision": {"decision": "require_confirmation", "explanation": "Clicking may change something."}}),
            )],
        ),
        ("gemini", Step::Done) => gemini_answer("The marker is written."),
        // Gemini 2.5, browser actions: type_text_at clicks into the terminal (which XFCE
        // opens at the top left) and types there.
        ("gemini25", Step::Terminal) => gemini_calls(
            None,
            vec![("key_combination", json!({"keys": "Control+Alt+T"}))],
        ),
        ("gemini25", Step::Type(t)) => gemini_calls(
            None,
            vec![(
                "type_text_at",
                json!({"x": 150, "y": 300, "text": t.trim_end_matches('\n'), "press_enter": true, "clear_before_typing": false}),
            )],
        ),
        ("gemini25", Step::Click(x, y)) => gemini_calls(
            None,
            vec![("click_at", json!({"x": x as i64, "y": y as i64}))],
        ),
        ("gemini25", Step::Done) => gemini_answer("The marker is written."),
        // Qwen3.5: the `computer` function, written as XML-style text.
        ("qwen35", s) => {
            let call = |params: &str| {
                format!("<tool_call>\n<function=computer>\n{params}\n</function>\n</tool_call>")
            };
            let calls = match s {
                Step::Terminal => call(
                    "<parameter=action>\nkey\n</parameter>\n<parameter=keys>\n[\"ctrl\", \"alt\", \"t\"]\n</parameter>",
                ),
                // Typed, then Enter as a key of its own.
                Step::Type(t) => format!(
                    "{}\n{}",
                    call(&format!(
                        "<parameter=action>\ntype\n</parameter>\n<parameter=text>\n{}\n</parameter>",
                        t.trim_end_matches('\n')
                    )),
                    call(
                        "<parameter=action>\nkey\n</parameter>\n<parameter=keys>\n[\"Return\"]\n</parameter>"
                    )
                ),
                Step::Click(x, y) => call(&format!(
                    "<parameter=action>\nleft_click\n</parameter>\n<parameter=coordinate>\n[{}, {}]\n</parameter>",
                    num(x),
                    num(y)
                )),
                Step::Done => return text_reply("The marker is written."),
            };
            text_reply(&format!("Action: the next step.\n{calls}"))
        }
        // Fara: free thoughts, then a computer_use call; `type` presses Enter itself.
        ("fara", s) => {
            let args = match s {
                Step::Terminal => json!({"action": "key", "keys": ["Control", "Alt", "t"]}),
                Step::Type(t) => {
                    json!({"action": "type", "text": t.trim_end_matches('\n'), "press_enter": true, "delete_existing_text": false})
                }
                Step::Click(x, y) => {
                    json!({"action": "left_click", "coordinate": [x as i64, y as i64]})
                }
                Step::Done => json!({"action": "terminate", "status": "success"}),
            };
            text_reply(&format!(
                "I think this is the next step.\n<tool_call>\n{}\n</tool_call>",
                json!({"name": "computer_use", "arguments": args})
            ))
        }
        // GLM-4.5V: the action between box tokens, then Memory.
        ("glm", s) => {
            let action = match s {
                Step::Terminal => "key(keys='ctrl+alt+t')".to_owned(),
                Step::Type(t) => format!("type(content='{}')", t.replace('\n', "\\n")),
                Step::Click(x, y) => format!(
                    "left_click(start_box='[{},{}]', element_info='the point')",
                    num(x),
                    num(y)
                ),
                Step::Done => "DONE()".to_owned(),
            };
            text_reply(&format!(
                "This is the next step.\n<|begin_of_box|>{action}<|end_of_box|>\nMemory:\n[]"
            ))
        }
        ("openai", Step::Terminal) => responses_call(
            vec![json!({"type": "keypress", "keys": ["CTRL", "ALT", "T"]})],
            vec![],
        ),
        ("openai", Step::Type(t)) => {
            responses_call(vec![json!({"type": "type", "text": t})], vec![])
        }
        ("openai", Step::Click(x, y)) => responses_call(
            vec![json!({"type": "click", "button": "left", "x": x as i64, "y": y as i64})],
            vec![],
        ),
        ("openai", Step::Done) => responses_answer("The marker is written."),
        ("uitars", s) => text_reply(&match s {
            Step::Terminal => {
                "Thought: I need a terminal.\nAction: hotkey(key='ctrl alt t')".into()
            }
            Step::Type(t) => format!(
                "Thought: Type the command.\nAction: type(content='{}')",
                t.replace('\n', "\\n")
            ),
            Step::Click(x, y) => format!(
                "Thought: Click the point.\nAction: click(start_box='<|box_start|>({},{})<|box_end|>')",
                num(x),
                num(y)
            ),
            Step::Done => "Thought: It is done.\nAction: finished(content='done')".into(),
        }),
        ("qwen", s) => {
            let args = match s {
                Step::Terminal => json!({"action": "key", "keys": ["ctrl", "alt", "t"]}),
                Step::Type(t) => json!({"action": "type", "text": t}),
                Step::Click(x, y) => {
                    json!({"action": "left_click", "coordinate": [x as i64, y as i64]})
                }
                Step::Done => json!({"action": "terminate", "status": "success"}),
            };
            text_reply(&format!(
                "Action: the next step.\n<tool_call>\n{}\n</tool_call>",
                json!({"name": "computer_use", "arguments": args})
            ))
        }
        ("opencua", s) => {
            let code = match s {
                Step::Terminal => "pyautogui.hotkey('ctrl', 'alt', 't')".into(),
                Step::Type(t) => format!("pyautogui.write({})", py_str(t)),
                Step::Click(x, y) => format!("pyautogui.click(x={}, y={})", num(x), num(y)),
                Step::Done => "computer.terminate(status=\"success\", answer='''done''')".into(),
            };
            text_reply(&format!(
                "## Thought:\nThe next step.\n## Action:\nDo it.\n## Code:\n```python\n{code}\n```"
            ))
        }
        ("pyautogui", s) => text_reply(&match s {
            Step::Terminal => "```python\npyautogui.hotkey('ctrl', 'alt', 't')\n```".into(),
            Step::Type(t) => format!("```python\npyautogui.write({})\n```", py_str(t)),
            Step::Click(x, y) => format!(
                "I click the point.\n```python\npyautogui.click({}, {})\n```",
                num(x),
                num(y)
            ),
            Step::Done => "```\nDONE\n```".into(),
        }),
        (other, _) => panic!("no replies for {other}"),
    }
}

fn py_str(t: &str) -> String {
    format!(
        "'{}'",
        t.replace('\\', "\\\\")
            .replace('\'', "\\'")
            .replace('\n', "\\n")
    )
}

/// A short wait in this protocol's own words (while the terminal opens).
pub(crate) fn wait(protocol: &str) -> Reply {
    match protocol {
        "tools" => call(json!({"action": "wait", "duration": 0.3})),
        "anthropic" => anthropic_tool_use(None, vec![json!({"action": "wait", "duration": 0.3})]),
        "openai" => responses_call(vec![json!({"type": "wait"})], vec![]),
        "uitars" => text_reply("Thought: Still loading.\nAction: wait()"),
        "qwen" => text_reply(
            "Action: wait.\n<tool_call>\n{\"name\": \"computer_use\", \"arguments\": {\"action\": \"wait\", \"time\": 0.3}}\n</tool_call>",
        ),
        "opencua" => text_reply("## Action:\nWait.\n## Code:\n```python\ntime.sleep(0.3)\n```"),
        "pyautogui" => text_reply("```python\ntime.sleep(0.3)\n```"),
        "anthropic-toolset" => anthropic_toolset(None, vec![("wait", json!({"duration": 1}))]),
        "gemini" => gemini_calls(
            None,
            vec![("wait", json!({"seconds": 1, "intent": "Let it load."}))],
        ),
        "gemini25" => gemini_calls(None, vec![("wait_5_seconds", json!({}))]),
        "qwen35" => text_reply(
            "Action: wait.\n<tool_call>\n<function=computer>\n<parameter=action>\nwait\n</parameter>\n<parameter=time>\n0.3\n</parameter>\n</function>\n</tool_call>",
        ),
        "fara" => text_reply(
            "Still loading.\n<tool_call>\n{\"name\": \"computer_use\", \"arguments\": {\"action\": \"wait\", \"time\": 0.3}}\n</tool_call>",
        ),
        "glm" => text_reply("Still loading.\n<|begin_of_box|>WAIT()<|end_of_box|>\nMemory:\n[]"),
        other => panic!("no wait for {other}"),
    }
}

/// Runs one case; returns what went wrong, if anything.
async fn run_case(c: &Case) -> Result<(), String> {
    let target = if c.screen.0 > 1280 {
        (1500, 700)
    } else {
        (1000, 560)
    };
    let (mx, my) = model_xy(c, target);
    let marker = format!("marker-{}-{}", c.dialect, c.screen.0);
    let typed = format!("echo {marker} > /tmp/proto.txt\n");
    let script = vec![
        reply(c.dialect, Step::Terminal),
        Reply::When(
            terminal_ready,
            Box::new(reply(c.dialect, Step::Type(&typed))),
        ),
        reply(c.dialect, Step::Click(mx, my)),
        reply(c.dialect, Step::Done),
    ];
    let server = ModelServer::any_protocol(script, c.sent, wait(c.dialect)).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("rec.db");
    // The base URL as users give it for each API.
    let base = match c.protocol {
        "anthropic" | "gemini" => server.base_url().trim_end_matches("/v1").to_owned(),
        _ => server.base_url(),
    };
    let mut args = vec![
        "run".to_owned(),
        "--headless".into(),
        "--json".into(),
        "--keep".into(),
        "--base-url".into(),
        base,
        "--model".into(),
        c.model.into(),
        "--width".into(),
        c.screen.0.to_string(),
        "--height".into(),
        c.screen.1.to_string(),
        "--db".into(),
        db.display().to_string(),
    ];
    args.extend(c.extra.iter().map(|s| (*s).to_owned()));
    args.push("write the marker, then click the point".into());
    let out = tokio::process::Command::new(bin())
        .args(&args)
        .env("OPENAI_API_KEY", "sk-test")
        .env("ANTHROPIC_API_KEY", "sk-ant-test")
        .env("GEMINI_API_KEY", "gm-test")
        .env_remove("OPENAI_BASE_URL")
        .env_remove("SELFAGENT_CONFIG")
        .env("HOME", dir.path())
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let events: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let sandbox = events
        .iter()
        .find_map(|e| e["sandbox"].as_str())
        .unwrap_or_default()
        .to_owned();
    let _guard = Guard(sandbox.clone());
    let why = |what: String| {
        // The episode's last events say how it went.
        let tail: Vec<String> = events
            .iter()
            .rev()
            .take(12)
            .rev()
            .map(|e| {
                let line = e.to_string();
                line.chars().take(400).collect()
            })
            .collect();
        format!(
            "{} via {} ({}x{}, {}): {what}\nstderr: {}\nproblems: {:?}\nlast events:\n{}",
            c.protocol,
            c.dialect,
            c.screen.0,
            c.screen.1,
            c.model,
            String::from_utf8_lossy(&out.stderr),
            server.problems(),
            tail.join("\n")
        )
    };
    if out.status.code() != Some(0) {
        return Err(why(format!("exit {:?}", out.status.code())));
    }
    if !server.problems().is_empty() {
        return Err(why("the server saw problems".into()));
    }
    // The session says which protocol and space it used.
    let started = events
        .iter()
        .find(|e| e["type"] == "session_started")
        .unwrap();
    if started["protocol"] != c.protocol {
        return Err(why(format!("protocol {}", started["protocol"])));
    }
    let docker = |args: &[&str]| {
        std::process::Command::new("docker")
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    let file = docker(&["exec", &sandbox, "cat", "/tmp/proto.txt"]);
    if file.trim() != marker {
        return Err(why(format!("the file holds {file:?}")));
    }
    let loc = docker(&[
        "exec",
        "-u",
        "user",
        &sandbox,
        "xdotool",
        "getmouselocation",
        "--shell",
    ]);
    let get = |k: &str| -> i64 {
        loc.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(-100)
    };
    let (px, py) = (get("X"), get("Y"));
    if (px - i64::from(target.0)).abs() > 2 || (py - i64::from(target.1)).abs() > 2 {
        return Err(why(format!(
            "the click landed at ({px}, {py}), not ({}, {}) (sent ({mx}, {my}))",
            target.0, target.1
        )));
    }
    let rec = Db::open_read(&db).unwrap();
    let s = &rec.sessions(1).unwrap()[0];
    if s.protocol.as_deref() != Some(c.protocol) {
        return Err(why(format!("recorded protocol {:?}", s.protocol)));
    }
    Ok(())
}

async fn run_all(cases: &[Case]) {
    let mut failures = Vec::new();
    // SELFAGENT_TEST_DIALECTS=glm,fara runs only those (while mending one).
    let only = std::env::var("SELFAGENT_TEST_DIALECTS").ok();
    let wanted = |c: &Case| {
        only.as_deref()
            .is_none_or(|o| o.split(',').any(|d| d.trim() == c.dialect))
    };
    for c in cases.iter().filter(|c| wanted(c)) {
        let started = std::time::Instant::now();
        let result = run_case(c).await;
        eprintln!(
            "{} via {} at {}x{}: {:.1} s",
            c.protocol,
            c.dialect,
            c.screen.0,
            c.screen.1,
            started.elapsed().as_secs_f64()
        );
        if let Err(e) = result {
            failures.push(e);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_protocol_types_and_clicks_where_its_model_meant() {
    run_all(&[
        // Detected from model ids.
        Case {
            protocol: "tools",
            dialect: "tools",
            model: "gpt-4o",
            extra: &[],
            screen: (1280, 800),
            sent: (1280, 800),
            space: Space::Pixels,
        },
        Case {
            protocol: "anthropic",
            dialect: "anthropic",
            model: "claude-sonnet-4-5-20250929",
            extra: &[],
            screen: (1280, 800),
            sent: (1280, 800),
            space: Space::Pixels,
        },
        Case {
            protocol: "openai",
            dialect: "openai",
            model: "computer-use-preview",
            extra: &[],
            screen: (1280, 800),
            sent: (1280, 800),
            space: Space::Pixels,
        },
        Case {
            protocol: "uitars",
            dialect: "uitars",
            model: "ByteDance-Seed/UI-TARS-1.5-7B",
            extra: &[],
            screen: (1280, 800),
            sent: (1288, 812),
            space: Space::Pixels,
        },
        Case {
            protocol: "qwen",
            dialect: "qwen",
            model: "Qwen/Qwen2.5-VL-7B-Instruct",
            extra: &[],
            screen: (1280, 800),
            sent: (1288, 812),
            space: Space::Pixels,
        },
        Case {
            protocol: "qwen",
            dialect: "qwen",
            model: "Qwen/Qwen3-VL-8B-Instruct",
            extra: &[],
            screen: (1280, 800),
            sent: (1280, 800),
            space: Space::Thousand,
        },
        Case {
            protocol: "opencua",
            dialect: "opencua",
            model: "xlangai/OpenCUA-7B",
            extra: &[],
            screen: (1280, 800),
            sent: (1288, 812),
            space: Space::Pixels,
        },
        Case {
            protocol: "pyautogui",
            dialect: "pyautogui",
            model: "gpt-4o",
            extra: &["--protocol", "pyautogui"],
            screen: (1280, 800),
            sent: (1280, 800),
            space: Space::Pixels,
        },
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_protocol_clicks_right_on_a_downscaled_1920x1080_screen() {
    run_all(&[
        // Each protocol's own downscaling (or --scale).
        Case {
            protocol: "tools",
            dialect: "tools",
            model: "gpt-4o",
            extra: &["--scale", "1280"],
            screen: (1920, 1080),
            sent: (1280, 720),
            space: Space::Pixels,
        },
        Case {
            protocol: "anthropic",
            dialect: "anthropic",
            model: "claude-opus-4-6",
            extra: &[],
            screen: (1920, 1080),
            sent: (1478, 831),
            space: Space::Pixels,
        },
        Case {
            protocol: "openai",
            dialect: "openai",
            model: "gpt-5.4",
            extra: &["--scale", "xga"],
            screen: (1920, 1080),
            sent: (1024, 768),
            space: Space::Pixels,
        },
        Case {
            protocol: "uitars",
            dialect: "uitars",
            model: "ui-tars-72b-dpo",
            extra: &[],
            screen: (1920, 1080),
            sent: (1920, 1080),
            space: Space::Thousand,
        },
        Case {
            protocol: "qwen",
            dialect: "qwen",
            model: "Qwen/Qwen2.5-VL-72B-Instruct",
            extra: &[],
            screen: (1920, 1080),
            sent: (1932, 1092),
            space: Space::Pixels,
        },
        Case {
            protocol: "qwen",
            dialect: "qwen",
            model: "qwen3-vl-235b-a22b-instruct",
            extra: &[],
            screen: (1920, 1080),
            sent: (1920, 1088),
            space: Space::Thousand,
        },
        Case {
            protocol: "opencua",
            dialect: "opencua",
            model: "OpenCUA-Qwen2-7B",
            extra: &["--coords", "unit"],
            screen: (1920, 1080),
            sent: (1920, 1080),
            space: Space::Unit,
        },
        Case {
            protocol: "pyautogui",
            dialect: "pyautogui",
            model: "my-model",
            extra: &["--protocol", "pyautogui", "--scale", "1280"],
            screen: (1920, 1080),
            sent: (1280, 720),
            space: Space::Pixels,
        },
    ])
    .await;
}

/// The models that lead in 2026, each chosen by its model id alone, in its own reply
/// format: Claude's computer toolset (batches with `repeat` and `zoom`; a 5.5 model never
/// gets the older tool), Gemini 3.x (a confirmation acknowledged) and 2.5 (browser
/// actions), Qwen3.5's XML calls, Fara with `press_enter`, GLM's boxed actions.
#[tokio::test(flavor = "multi_thread")]
async fn the_2026_dialects_type_and_click_where_their_models_meant() {
    run_all(&[
        Case {
            protocol: "anthropic",
            dialect: "anthropic-toolset",
            model: "claude-sonnet-5-5",
            extra: &[],
            screen: (1280, 800),
            sent: (1280, 800),
            space: Space::Pixels,
        },
        Case {
            protocol: "gemini",
            dialect: "gemini",
            model: "gemini-3.5-flash",
            extra: &["--ack-safety-checks"],
            screen: (1280, 800),
            sent: (1280, 800),
            space: Space::Thousand,
        },
        Case {
            protocol: "gemini",
            dialect: "gemini25",
            model: "gemini-2.5-computer-use-preview-10-2025",
            extra: &[],
            screen: (1280, 800),
            sent: (1280, 800),
            space: Space::Thousand,
        },
        Case {
            protocol: "qwen",
            dialect: "qwen35",
            model: "Qwen/Qwen3.5-35B-A3B",
            extra: &[],
            screen: (1280, 800),
            sent: (1280, 800),
            space: Space::Thousand,
        },
        Case {
            protocol: "fara",
            dialect: "fara",
            model: "microsoft/Fara-7B",
            extra: &[],
            screen: (1280, 800),
            sent: (1288, 812),
            space: Space::Pixels,
        },
        Case {
            protocol: "glm",
            dialect: "glm",
            model: "zai-org/GLM-4.5V",
            extra: &[],
            screen: (1280, 800),
            sent: (1280, 800),
            space: Space::NineNineNine,
        },
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_2026_dialects_click_right_on_a_1920x1080_screen() {
    run_all(&[
        Case {
            protocol: "anthropic",
            dialect: "anthropic-toolset",
            model: "claude-opus-5-5",
            extra: &[],
            screen: (1920, 1080),
            sent: (1478, 831),
            space: Space::Pixels,
        },
        Case {
            protocol: "gemini",
            dialect: "gemini",
            model: "gemini-3.5-flash",
            extra: &["--ack-safety-checks"],
            screen: (1920, 1080),
            sent: (1920, 1080),
            space: Space::Thousand,
        },
        Case {
            protocol: "qwen",
            dialect: "qwen35",
            model: "Qwen/Qwen3.5-397B-A17B",
            extra: &[],
            screen: (1920, 1080),
            sent: (1920, 1088),
            space: Space::Thousand,
        },
        Case {
            protocol: "fara",
            dialect: "fara",
            model: "microsoft/Fara-1.5",
            extra: &[],
            screen: (1920, 1080),
            sent: (1932, 1092),
            space: Space::Pixels,
        },
        Case {
            protocol: "glm",
            dialect: "glm",
            model: "zai-org/GLM-4.6V",
            extra: &[],
            screen: (1920, 1080),
            sent: (1920, 1080),
            space: Space::NineNineNine,
        },
    ])
    .await;
}

/// Headless, nobody can be asked: a safety check stops the episode (recorded, exit 6)
/// unless `--ack-safety-checks`; a model's call for help ends it as `needs_user`.
#[tokio::test(flavor = "multi_thread")]
async fn headless_runs_refuse_safety_checks_unless_told_and_end_calls_for_help() {
    let check = json!({"id": "cu_sc_9", "code": "sensitive_domain", "message": "The page may hold sensitive data."});
    let run = |server: &ModelServer, model: &str, extra: &[&str], db: &std::path::Path| {
        let mut args = vec![
            "run".to_owned(),
            "--headless".into(),
            "--base-url".into(),
            server.base_url(),
            "--model".into(),
            model.into(),
            "--db".into(),
            db.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args.push("do the thing".into());
        tokio::process::Command::new(bin())
            .args(args)
            .env("OPENAI_API_KEY", "sk-test")
            .env_remove("OPENAI_BASE_URL")
            .env_remove("SELFAGENT_CONFIG")
            .stdin(Stdio::null())
            .output()
    };
    let dir = tempfile::tempdir().unwrap();
    let script = || {
        vec![
            responses_call(
                vec![json!({"type": "click", "button": "left", "x": 300, "y": 300})],
                vec![check.clone()],
            ),
            responses_answer("Done."),
        ]
    };
    let wait = || responses_call(vec![json!({"type": "wait"})], vec![]);

    let server = ModelServer::any_protocol(script(), (1280, 800), wait()).await;
    let db = dir.path().join("a.db");
    let out = run(&server, "gpt-5.4", &[], &db).await.unwrap();
    assert_eq!(
        out.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(server.requests().len(), 1, "the click must not run");
    let rec = Db::open_read(&db).unwrap();
    let s = rec.sessions(1).unwrap().remove(0);
    assert_eq!(
        (s.status.as_str(), s.meta["ended_by"].as_str()),
        ("stopped", Some("safety"))
    );
    assert!(s.error.unwrap().contains("--ack-safety-checks"));
    let events = rec.events(&s.id).unwrap();
    let safety = events.iter().find(|e| e.kind == "safety_check").unwrap();
    assert!(safety.data.as_deref().unwrap().contains("refused"));

    let server = ModelServer::any_protocol(script(), (1280, 800), wait()).await;
    let db = dir.path().join("b.db");
    let out = run(&server, "gpt-5.4", &["--ack-safety-checks"], &db)
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let second = server.requests()[1].to_string();
    assert!(second.contains("acknowledged_safety_checks") && second.contains("cu_sc_9"));

    let server = ModelServer::any_protocol(
        vec![text_reply(
            "Thought: I cannot log in without the password.\nAction: call_user()",
        )],
        (1288, 812),
        text_reply("Thought: wait\nAction: wait()"),
    )
    .await;
    let db = dir.path().join("c.db");
    let out = run(&server, "UI-TARS-1.5-7B", &[], &db).await.unwrap();
    assert_eq!(
        out.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let rec = Db::open_read(&db).unwrap();
    assert_eq!(rec.sessions(1).unwrap()[0].status, "needs_user");
    // Owned desktops are removed on exit; nothing to clean up here.
}

/// A task's judge asks in the wire format of the model's protocol (Messages, Responses):
/// the question and the screenshots reach it, and its verdict grades the episode.
#[tokio::test(flavor = "multi_thread")]
async fn the_judge_asks_in_the_models_own_protocol() {
    let task =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tasks/terminal-judge.toml");
    let verdict = json!({"passed": true, "reason": "the listing of /etc is on screen"}).to_string();
    let mut failures = Vec::new();
    for (protocol, model) in [
        ("anthropic", "claude-sonnet-4-5-20250929"),
        ("openai", "computer-use-preview"),
        ("gemini", "gemini-3.5-flash"),
    ] {
        let script = vec![
            Reply::When(
                terminal_ready,
                Box::new(reply(protocol, Step::Type("ls /etc\n"))),
            ),
            reply(protocol, Step::Done),
            match protocol {
                "anthropic" => anthropic_answer(&verdict),
                "gemini" => gemini_answer(&verdict),
                _ => responses_answer(&verdict),
            },
        ];
        let server = ModelServer::any_protocol(script, (1280, 800), wait(protocol)).await;
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("rec.db");
        let _snapshots = SnapshotsOf(db.clone());
        let base = match protocol {
            "anthropic" | "gemini" => server.base_url().trim_end_matches("/v1").to_owned(),
            _ => server.base_url(),
        };
        let out = tokio::process::Command::new(bin())
            .env("GEMINI_API_KEY", "gm-test")
            .args([
                "run",
                "--headless",
                "--task",
                task.to_str().unwrap(),
                "--base-url",
                &base,
                "--model",
                model,
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
            "{protocol}: exit {:?}\n{}\n{}\nproblems: {:?}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            server.problems()
        );
        let requests = server.requests();
        let Some(judge) = requests.last() else {
            failures.push(format!("no requests\n{log}"));
            continue;
        };
        let asked = judge.to_string();
        let shape = match protocol {
            "anthropic" => {
                judge["system"].is_string()
                    && judge["messages"][0]["content"]
                        .as_array()
                        .is_some_and(|c| c.iter().any(|b| b["type"] == "image"))
            }
            "gemini" => {
                judge["systemInstruction"]["parts"][0]["text"].is_string()
                    && judge["contents"][0]["parts"]
                        .as_array()
                        .is_some_and(|p| p.iter().any(|b| b["inlineData"].is_object()))
            }
            _ => {
                judge["instructions"].is_string()
                    && judge["input"][0]["content"]
                        .as_array()
                        .is_some_and(|c| c.iter().any(|b| b["type"] == "input_image"))
            }
        };
        let graded = Db::open_read(&db)
            .ok()
            .and_then(|rec| {
                let s = rec.sessions(1).ok()?.pop()?;
                rec.grades(&s.id).ok()?.pop()
            })
            .map(|g| g.passed);
        if out.status.code() != Some(0)
            || !server.problems().is_empty()
            || !shape
            || judge.get("tools").is_some()
            || !asked.contains("listing of the /etc directory")
            || graded != Some(Some(true))
        {
            failures.push(format!(
                "judge request {}\ngrade {graded:?}\n{log}",
                &asked[..asked.len().min(600)]
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// The SDK judges refuse what the vendors' APIs refuse (so a test passing through them
/// means something): an unknown field, a field of the older tool on the toolset, a model
/// named in Gemini's body, a reply missing what the SDK's response type needs.
#[tokio::test(flavor = "multi_thread")]
async fn the_sdk_judges_refuse_what_the_apis_refuse() {
    use crate::common::sdk::{Api, judge};
    let anthropic = |tool: Value| {
        json!({"model": "claude-opus-5-5", "max_tokens": 64, "tools": [tool],
               "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]})
    };
    assert!(
        judge(
            Api::Anthropic,
            "request",
            &anthropic(json!({"type": "computer_toolset_20260801"}))
        )
        .await
        .is_ok()
    );
    for (api, body, why) in [
        (
            Api::Anthropic,
            anthropic(json!({"type": "computer_toolset_20260801", "name": "computer"})),
            "name",
        ),
        (
            Api::Anthropic,
            anthropic(json!({"type": "computer_toolset_20260801", "display_width_px": 1280})),
            "display_width_px",
        ),
        (
            Api::OpenAiChat,
            json!({"model": "m", "messages": [{"role": "robot", "content": "hi"}]}),
            "robot",
        ),
        (
            Api::OpenAiResponses,
            json!({"model": "m", "input": [{"type": "computer_call_output", "call_id": "c",
                   "output": {"type": "computer_screenshot", "image_url": "data:", "detail": "original"}}]}),
            "detail",
        ),
        (
            Api::Gemini,
            json!({"model": "gemini-3.5-flash", "contents": [{"role": "user", "parts": [{"text": "hi"}]}]}),
            "model",
        ),
        (
            Api::Gemini,
            json!({"contents": [{"role": "user", "parts": [{"txet": "hi"}]}]}),
            "txet",
        ),
    ] {
        let e = judge(api, "request", &body).await.unwrap_err();
        assert!(e.contains(why), "{api:?} {body}: {e}");
    }
    let e = judge(
        Api::Anthropic,
        "reply",
        &json!({"type": "message", "content": [{"type": "text", "text": "hi"}]}),
    )
    .await
    .unwrap_err();
    assert!(e.contains("Field required"), "{e}");
}

/// A planner names elements in words and a grounder answers in OS-Atlas's box format: the
/// click lands within 3 px of the element's centre, and the recording keeps both calls.
#[tokio::test(flavor = "multi_thread")]
async fn a_planner_names_elements_and_a_grounder_finds_them() {
    // The element: its centre on the screen, and OS-Atlas's box around it on 0-1000.
    let target = (1000, 560);
    let box_text = "<|object_ref_start|>the red square<|object_ref_end|><|box_start|>(771,690),(791,710)<|box_end|>";
    let script = vec![
        call(json!({"action": "key", "text": "ctrl+alt+t"})),
        Reply::When(
            terminal_ready,
            Box::new(call(
                json!({"action": "type", "text": "echo planned > /tmp/proto.txt\n"}),
            )),
        ),
        call(json!({"action": "left_click", "element": "the red square on the right"})),
        // The grounder's answer, asked right after the planner's reply.
        text_reply(box_text),
        answer("Done."),
    ];
    let server = ModelServer::any_protocol(script, (1280, 800), wait("tools")).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("rec.db");
    let out = tokio::process::Command::new(bin())
        .args([
            "run",
            "--headless",
            "--json",
            "--keep",
            "--base-url",
            &server.base_url(),
            "--model",
            "gpt-4o",
            "--grounder",
            "OS-Copilot/OS-Atlas-Base-7B",
            "--db",
            db.to_str().unwrap(),
            "write the file, then click the red square",
        ])
        .env("OPENAI_API_KEY", "sk-test")
        .env_remove("OPENAI_BASE_URL")
        .env_remove("SELFAGENT_CONFIG")
        .env("HOME", dir.path())
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let events: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let sandbox = events
        .iter()
        .find_map(|e| e["sandbox"].as_str())
        .unwrap_or_default()
        .to_owned();
    let _guard = Guard(sandbox.clone());
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}\n{:?}",
        String::from_utf8_lossy(&out.stderr),
        server.problems()
    );
    assert!(server.problems().is_empty(), "{:?}", server.problems());
    // The planner is told to name elements, never given coordinates to fill in.
    let requests = server.requests();
    let planner = &requests[0]["tools"][0]["function"]["parameters"]["properties"];
    assert!(
        planner["element"].is_object() && planner["coordinate"].is_null(),
        "{planner}"
    );
    // The grounder got OS-Atlas's own question and the screenshot.
    let asked = requests
        .iter()
        .find(|r| r.get("tools").is_none() && r.to_string().contains("In this UI screenshot"))
        .expect("a grounding request");
    assert_eq!(asked["model"], "OS-Copilot/OS-Atlas-Base-7B");
    assert!(asked.to_string().contains("the red square on the right"));
    let loc = std::process::Command::new("docker")
        .args([
            "exec",
            "-u",
            "user",
            &sandbox,
            "xdotool",
            "getmouselocation",
            "--shell",
        ])
        .output()
        .unwrap();
    let loc = String::from_utf8_lossy(&loc.stdout);
    let get = |k: &str| -> i64 {
        loc.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(-100)
    };
    assert!(
        (get("X") - target.0).abs() <= 3 && (get("Y") - target.1).abs() <= 3,
        "the click landed at ({}, {}), not {target:?}",
        get("X"),
        get("Y")
    );
    let grounded = events
        .iter()
        .find(|e| e["type"] == "grounded")
        .expect("a grounded event");
    assert_eq!(grounded["point"], json!([1000, 560]));
    // Recorded: the grounding in its step, with the grounder's tokens.
    let rec = Db::open_read(&db).unwrap();
    let s = rec.sessions(1).unwrap().remove(0);
    let steps = rec.steps(&s.id).unwrap();
    let step = steps
        .iter()
        .find(|st| st.meta["grounding"].is_array())
        .expect("a step with its grounding");
    let g = &step.meta["grounding"][0];
    assert_eq!(g["element"], "the red square on the right");
    assert_eq!(g["point"], json!([1000, 560]));
    assert!(g["response"].to_string().contains("box_start"), "{g}");
    assert!(
        !g["request"].to_string().contains("base64,"),
        "no pixels recorded: {g}"
    );
    assert_eq!(
        step.tokens_in, 200,
        "the planner's and the grounder's tokens"
    );
}

/// `--observe`: every protocol's requests with the accessibility tree beside each screen
/// (and, for the protocols that take it, with the tree alone and no screenshot) pass its
/// vendor's SDK types — the first turn, a turn's results, a hand-back — and carry the tree
/// each time.
#[tokio::test(flavor = "multi_thread")]
async fn every_protocols_requests_with_the_tree_pass_its_sdk() {
    use crate::common::sdk::{Api, judge};
    use selfagent::model::ModelField;
    use selfagent::model::protocol::{ALL, Observe, ProtocolConfig, ProtocolName, Shot};
    // The SDKs' types take the image data as a string; its bytes are not read.
    let png = std::sync::Arc::new(b"\x89PNG".to_vec());
    let shot = |n: u32| Shot {
        sha256: format!("{n:064x}"),
        png: png.clone(),
        tree: Some(format!("tag\tname\ttext\nmenu\tFile\t\"\"\tTREE-{n}")),
    };
    let mut judged = 0;
    for spec in ALL {
        let name: ProtocolName = spec.name().parse().unwrap();
        for observe in [Observe::ScreenshotA11y, Observe::A11y] {
            if !observe.pixels() && !spec.observes_text() {
                continue;
            }
            let example = spec.example();
            let cfg = ProtocolConfig {
                observe,
                ..ProtocolConfig::for_model(name, example.model)
            };
            let mut p = selfagent::model::protocol::create(&cfg, (1280, 800)).unwrap();
            let mut sent = Vec::new();
            let mut send = |p: &dyn selfagent::model::protocol::Protocol, tree: &str| {
                let (request, _) = p.request();
                let mut body: Value =
                    serde_json::from_slice(&request.blobs.serialize(&request.body)).unwrap();
                if request.model_field == ModelField::Body {
                    body["model"] = json!(example.model);
                }
                assert!(
                    body.to_string().contains(tree),
                    "{name} {observe:?}: no {tree}"
                );
                sent.push((Api::of_path(&request.path).unwrap(), body));
            };
            p.begin("Type hello.", &shot(1));
            send(p.as_ref(), "TREE-1");
            let decision = p.decode(&example.reply).unwrap();
            p.assistant(&example.reply, &decision);
            p.results(
                &decision.answered_ok(),
                &shot(2),
                "The screen after your actions:",
            );
            send(p.as_ref(), "TREE-2");
            p.results(&[], &shot(3), "A person handed the desktop back.");
            send(p.as_ref(), "TREE-3");
            for (i, (api, body)) in sent.into_iter().enumerate() {
                if let Err(why) = judge(api, "request", &body).await {
                    panic!(
                        "{name} {observe:?}, request {}: the {api:?} SDK refuses it: {why}\n{body}",
                        i + 1
                    );
                }
                if !observe.pixels() {
                    assert!(
                        !body.to_string().contains("base64"),
                        "{name}: an image in {body}"
                    );
                }
                judged += 1;
            }
        }
    }
    // Ten protocols with the tree beside the screen, three with the tree alone.
    assert_eq!(judged, 3 * (ALL.len() + 3));
}
