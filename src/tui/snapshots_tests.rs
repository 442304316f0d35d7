//! Every screen and state of the TUI, drawn on ratatui's TestBackend from events fed into
//! the real [`App`], compared with insta snapshots (src/tui/snapshots/). Screenshot pixels
//! are out of a TestBackend's reach: the pane shows its placeholder instead.

use super::app::{App, Effect, Screen};
use super::shot::Shots;
use super::view;
use crate::action::{Action, Button, Point};
use crate::agent::Command;
use crate::agent::{EndedBy, Event, Frame, Outcome, SessionInfo, Status};
use crate::desktop::SettleReport;
use crate::model::Usage;
use crate::model::protocol::Call;
use crate::record::{SessionRow, StepRow};
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use serde_json::json;
use std::sync::Arc;

fn frame(n: u8) -> Frame {
    Frame::new(Arc::new(vec![n; 16]), 1280, 800)
}

fn started() -> Event {
    Event::SessionStarted(SessionInfo {
        session: "20261122-101500-abc123".into(),
        sandbox: "8f9fdbaf384e1234".into(),
        instruction: "Open a terminal and write the date into ~/today.txt".into(),
        task_id: None,
        model: "ui-tars-1.5".into(),
        base_url: "http://127.0.0.1:8000/v1".into(),
        coords: "smart".into(),
        protocol: "uitars".into(),
        image: "selfagent-desktop:latest".into(),
        engine: String::new(),
        width: 1280,
        height: 800,
        sent_width: 1280,
        sent_height: 800,
        max_steps: 30,
        timeout_s: 600.0,
        task: None,
        price: None,
        source: None,
        rerun_of: None,
    })
}

fn reply(step: u32, thought: &str) -> Event {
    Event::ModelReply {
        step,
        thought: Some(thought.into()),
        text: Some(thought.into()),
        calls: vec![Call {
            id: "c".into(),
            input: json!({"action": "screenshot"}),
            action: Ok(Action::Screenshot),
        }],
        usage: Usage {
            input: 1500 + u64::from(step) * 200,
            output: 30,
            ..Usage::default()
        },
        model_ms: 1234.0,
        attempts: 1,
        exchange: None,
    }
}

fn done(step: u32, index: usize, action: Action) -> Event {
    Event::ActionDone {
        step,
        index,
        action,
        text: None,
        act_ms: 0.4,
        image: None,
    }
}

fn finished_step(step: u32, n: u8) -> Vec<Event> {
    vec![
        Event::Settled {
            step,
            report: SettleReport {
                waited_ms: 74.0,
                changes: 12,
                quiet: true,
                reaction_ms: Some(33.0),
            },
        },
        Event::StepFinished {
            step,
            frame: frame(n),
            step_ms: 1420.0,
        },
    ]
}

/// A live app three steps into a run: a click, a typed command, a bad key.
fn live_app() -> App {
    let mut app = App::new(Screen::Live);
    app.view_url = Some("http://127.0.0.1:35001/vnc.html?token=…".into());
    let mut events = vec![started()];
    events.extend([
        Event::StepStarted { step: 1 },
        Event::Observation {
            step: 1,
            frame: frame(1),
        },
        reply(1, "I will open a terminal from the dock."),
    ]);
    events.push(done(
        1,
        0,
        Action::Click {
            coordinate: Some(Point::new(567, 775)),
            button: Button::Left,
            count: 1,
            modifiers: vec![],
        },
    ));
    events.extend(finished_step(1, 2));
    events.extend([
        Event::StepStarted { step: 2 },
        Event::Observation {
            step: 2,
            frame: frame(2),
        },
        reply(2, "The terminal is open; type the command."),
    ]);
    events.push(done(
        2,
        0,
        Action::Type {
            text: "date > ~/today.txt\n".into(),
        },
    ));
    events.extend(finished_step(2, 3));
    events.extend([
        Event::StepStarted { step: 3 },
        Event::Observation {
            step: 3,
            frame: frame(3),
        },
        reply(3, "Confirm with a key."),
    ]);
    events.push(Event::ActionFailed {
        step: 3,
        index: 0,
        input: json!({"action": "key", "text": "ctrl+Nope"}),
        error: "unknown key 'Nope': did you mean Home?".into(),
    });
    events.extend(finished_step(3, 3));
    events.extend([
        Event::StepStarted { step: 4 },
        Event::Observation {
            step: 4,
            frame: frame(3),
        },
    ]);
    for e in &events {
        app.on_event(e);
    }
    app.elapsed_ms = 42_000;
    app
}

fn finish(
    app: &mut App,
    status: Status,
    ended_by: EndedBy,
    answer: Option<&str>,
    error: Option<&str>,
) {
    app.on_event(&Event::Finished(Outcome {
        status,
        ended_by,
        answer: answer.map(str::to_owned),
        error: error.map(str::to_owned),
        steps: 4,
        tokens_in: 8200,
        tokens_out: 120,
        wall_ms: 42_000,
        cost: None,
    }));
}

fn draw(app: &App, cols: u16, rows: u16) -> String {
    let mut terminal = Terminal::new(TestBackend::new(cols, rows)).unwrap();
    let shots = Shots::new(None);
    terminal.draw(|f| view::draw(f, app, &shots)).unwrap();
    format!("{}", terminal.backend())
}

fn key(c: char) -> KeyEvent {
    KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)
}

#[test]
fn live_running() {
    insta::assert_snapshot!(draw(&live_app(), 140, 36));
}

#[test]
fn live_paused() {
    let mut app = live_app();
    app.on_key(key('p'));
    app.on_event(&Event::Paused {
        step: 4,
        reason: "paused".into(),
    });
    insta::assert_snapshot!(draw(&app, 140, 36));
}

#[test]
fn approve_prompt() {
    let mut app = live_app();
    app.on_key(key('a'));
    app.on_event(&Event::Intervention {
        step: 4,
        kind: "approve_on".into(),
        text: None,
    });
    app.on_event(&Event::AwaitingApproval {
        step: 4,
        index: 0,
        action: Action::Click {
            coordinate: Some(Point::new(640, 400)),
            button: Button::Right,
            count: 1,
            modifiers: vec![],
        },
    });
    insta::assert_snapshot!(draw(&app, 140, 36));
}

#[test]
fn a_safety_check_is_asked_and_answered() {
    let mut app = live_app();
    app.on_event(&Event::SafetyCheck {
        step: 4,
        checks: vec![crate::model::protocol::SafetyCheck {
            confirm: false,
            id: "cu_sc_1".into(),
            code: "malicious_instructions".into(),
            message: "We've detected instructions that may cause your application to perform malicious or unauthorized actions.".into(),
        }],
        acknowledged: "asked".into(),
    });
    insta::assert_snapshot!(draw(&app, 140, 36));
    assert_eq!(
        app.on_key(key('y')),
        vec![Effect::Send(Command::Approve)],
        "y acknowledges"
    );
    assert!(app.awaiting.is_none());
}

#[test]
fn the_agent_asking_for_help_is_shown_until_answered() {
    let mut app = live_app();
    app.on_event(&Event::NeedsUser {
        step: 5,
        question: Some("Which account should I log in with?".into()),
    });
    insta::assert_snapshot!(draw(&app, 140, 36));
    // y does not answer it: the answer is a message.
    assert!(
        !app.on_key(key('y'))
            .contains(&Effect::Send(Command::Approve))
    );
    app.on_event(&Event::Intervention {
        step: 5,
        kind: "message".into(),
        text: Some("the work one".into()),
    });
    assert!(app.awaiting.is_none());
}

#[test]
fn message_input_and_take_over() {
    let mut app = live_app();
    app.on_key(key('m'));
    for c in "use the keyboard".chars() {
        app.on_key(key(c));
    }
    let typing = draw(&app, 140, 36);
    app.on_key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE));
    app.on_key(key('t'));
    app.on_event(&Event::Paused {
        step: 4,
        reason: "taken_over".into(),
    });
    insta::assert_snapshot!(format!("{typing}\n{}", draw(&app, 140, 36)));
}

#[test]
fn finished() {
    let mut app = live_app();
    app.on_event(&Event::ModelReply {
        step: 4,
        thought: None,
        text: Some("The date is in ~/today.txt.".into()),
        calls: vec![],
        usage: Usage {
            input: 2300,
            output: 12,
            ..Usage::default()
        },
        model_ms: 800.0,
        attempts: 1,
        exchange: None,
    });
    app.on_event(&Event::StepFinished {
        step: 4,
        frame: frame(3),
        step_ms: 900.0,
    });
    finish(
        &mut app,
        Status::Succeeded,
        EndedBy::Model,
        Some("The date is in ~/today.txt."),
        None,
    );
    insta::assert_snapshot!(draw(&app, 140, 36));
}

#[test]
fn finished_and_graded() {
    use crate::task::check::{CheckResult, Grade, Verdict};
    let leaf = |check: &str, verdict, detail: &str| CheckResult {
        check: check.into(),
        verdict,
        score: if verdict == Verdict::Passed { 1.0 } else { 0.0 },
        weight: 1.0,
        detail: detail.into(),
        children: vec![],
    };
    let mut app = live_app();
    app.on_event(&Event::Setup {
        phase: "setup".into(),
        index: 2,
        total: 2,
        step: "wait for a window with class /(?i)xfce4-terminal/".into(),
        ms: 12.0,
        error: None,
    });
    finish(
        &mut app,
        Status::Succeeded,
        EndedBy::Model,
        Some("The date is in ~/today.txt."),
        None,
    );
    app.on_event(&Event::Graded {
        grade: Grade {
            task_id: "terminal-date".into(),
            passed: Some(false),
            score: 0.5,
            evidence: "live".into(),
            result: Some(CheckResult {
                check: "all".into(),
                verdict: Verdict::Failed,
                score: 0.5,
                weight: 1.0,
                detail: "1 of 2 passed".into(),
                children: vec![
                    leaf(
                        "~/today.txt exists",
                        Verdict::Passed,
                        "29 bytes: \"Sun Nov 22\"",
                    ),
                    leaf(
                        "`wc -l < ~/today.txt`, stdout /^2$/",
                        Verdict::Failed,
                        "stdout does not match /^2$/",
                    ),
                ],
            }),
            error: None,
            checks: None,
        },
        state: None,
    });
    insta::assert_snapshot!(draw(&app, 140, 36));
}

#[test]
fn error() {
    let mut app = live_app();
    app.on_event(&Event::ModelRetry {
        step: 4,
        attempt: 1,
        error: "the model server answered HTTP 503: overloaded".into(),
        wait_ms: 500,
    });
    finish(
        &mut app,
        Status::Error,
        EndedBy::Error,
        None,
        Some("the model call of step 4 failed: gave up after 6 attempts"),
    );
    insta::assert_snapshot!(draw(&app, 140, 36));
}

#[test]
fn help_overlay() {
    let mut app = live_app();
    app.on_key(key('?'));
    insta::assert_snapshot!(draw(&app, 140, 36));
}

#[test]
fn small_terminal() {
    let mut app = live_app();
    let running = draw(&app, 80, 24);
    app.on_key(KeyEvent::new(KeyCode::Up, KeyModifiers::NONE));
    insta::assert_snapshot!(format!("{running}\n{}", draw(&app, 80, 24)));
}

fn session_row(id: &str, status: &str, steps: i64, instruction: &str) -> SessionRow {
    SessionRow {
        id: id.into(),
        created_at: 1_795_342_500_000,
        ended_at: Some(1_795_342_542_000),
        status: status.into(),
        instruction: instruction.into(),
        task_id: None,
        model: Some("ui-tars-1.5".into()),
        base_url: Some("http://127.0.0.1:8000/v1".into()),
        protocol: Some("uitars".into()),
        image: None,
        sandbox: Some("8f9fdbaf384e1234".into()),
        width: Some(1280),
        height: Some(800),
        steps,
        tokens_in: 8200,
        tokens_out: 120,
        wall_ms: Some(42_000),
        answer: (status == "succeeded").then(|| "The date is in ~/today.txt.".into()),
        error: (status != "succeeded").then(|| "the step limit (30) was reached".into()),
        meta: json!({"max_steps": 30, "coords": "smart"}),
    }
}

fn step_row(idx: i64, action: serde_json::Value, ok: bool) -> StepRow {
    StepRow {
        idx,
        started_at: 1_795_342_500_000 + idx * 1500,
        frame_before: Some(idx),
        frame_after: Some(idx + 1),
        thought: Some(format!("thinking about step {idx}")),
        text: None,
        actions: if ok {
            json!([{"index": 0, "ok": true, "action": action, "act_ms": 0.5}])
        } else {
            json!([{"index": 0, "ok": false, "input": action, "error": "coordinate (1400, 10) is outside the 1280x800 screen"}])
        },
        error: None,
        model_ms: Some(900.0),
        act_ms: Some(0.5),
        settle_ms: Some(70.0),
        step_ms: Some(1000.0),
        tokens_in: 1500,
        tokens_out: 25,
        meta: json!({}),
    }
}

#[test]
fn replay() {
    let mut app = App::new(Screen::Replay);
    let steps = vec![
        step_row(1, json!({"action": "key", "text": "ctrl+alt+t"}), true),
        step_row(
            2,
            json!({"action": "drag", "path": [[100, 100], [300, 200]], "button": "left"}),
            true,
        ),
        step_row(
            3,
            json!({"action": "left_click", "coordinate": [1400, 10]}),
            false,
        ),
    ];
    app.load_replay(
        &session_row("20261122-101500-abc123", "succeeded", 3, "Open a terminal"),
        &steps,
    );
    app.on_key(KeyEvent::new(KeyCode::Right, KeyModifiers::NONE));
    let second = draw(&app, 140, 36);
    app.on_key(KeyEvent::new(KeyCode::End, KeyModifiers::NONE));
    app.on_key(key('b'));
    insta::assert_snapshot!(format!("{second}\n{}", draw(&app, 140, 36)));
}

#[test]
fn session_list() {
    let mut app = App::new(Screen::Browser);
    app.sessions = vec![
        session_row(
            "20261122-101500-abc123",
            "succeeded",
            4,
            "Open a terminal and write the date into ~/today.txt",
        ),
        session_row(
            "20261122-094012-77e0c1",
            "failed",
            30,
            "Find the cheapest flight",
        ),
        session_row(
            "20261121-170301-0b9f4d",
            "interrupted",
            7,
            "Rename the files in ~/Pictures",
        ),
    ];
    app.on_key(KeyEvent::new(KeyCode::Down, KeyModifiers::NONE));
    insta::assert_snapshot!(draw(&app, 120, 14));
}

#[test]
fn ask_for_a_task() {
    let mut app = App::new(Screen::Ask);
    for c in "open firefox".chars() {
        app.on_key(key(c));
    }
    insta::assert_snapshot!(draw(&app, 100, 16));
}

#[test]
fn keys_drive_the_loop() {
    use super::app::Effect;
    use crate::agent::Command;
    let mut app = live_app();
    assert_eq!(app.on_key(key('p')), vec![Effect::Send(Command::Pause)]);
    assert_eq!(app.on_key(key('p')), vec![Effect::Send(Command::Resume)]);
    assert_eq!(app.on_key(key('s')), vec![Effect::Send(Command::Step)]);
    assert_eq!(
        app.on_key(key('a')),
        vec![Effect::Send(Command::ApproveMode(true))]
    );
    assert_eq!(app.on_key(key('t')), vec![Effect::Send(Command::TakeOver)]);
    assert_eq!(app.on_key(key('t')), vec![Effect::Send(Command::HandBack)]);
    app.on_event(&Event::AwaitingApproval {
        step: 4,
        index: 0,
        action: Action::Screenshot,
    });
    assert_eq!(app.on_key(key('n')), vec![Effect::Send(Command::Deny)]);
    assert_eq!(app.on_key(key('x')), vec![Effect::Send(Command::Stop)]);
    assert_eq!(app.on_key(key('q')), vec![Effect::Quit]);
}

#[test]
fn a_stop_while_the_model_thinks_is_drawn_as_the_end() {
    let mut app = live_app();
    assert_eq!(app.steps.last().unwrap().summary(), "thinking…");
    finish(&mut app, Status::Stopped, EndedBy::User, None, None);
    assert_eq!(
        app.steps.last().unwrap().summary(),
        "(ended before the model answered)"
    );
    let screen = draw(&app, 140, 36);
    assert!(!screen.contains("thinking…"), "{screen}");
    // One step is "1 step".
    let mut one = App::new(Screen::Live);
    one.on_event(&started());
    for e in finished_step(1, 1) {
        one.on_event(&e);
    }
    assert!(draw(&one, 140, 36).contains("timeline · 1 step "));
}

#[test]
fn esc_goes_back_and_q_asks_before_stopping_a_running_agent() {
    use super::app::Effect;
    let esc = KeyEvent::new(KeyCode::Esc, KeyModifiers::NONE);
    // Running: q asks; any other key goes on, y (or q again) quits.
    let mut app = live_app();
    assert_eq!(app.on_key(key('q')), vec![]);
    assert!(app.confirm_quit);
    insta::assert_snapshot!(draw(&app, 100, 20));
    assert_eq!(app.on_key(key('n')), vec![]);
    assert!(!app.confirm_quit && app.notice.is_none());
    assert_eq!(app.on_key(key('q')), vec![]);
    assert_eq!(app.on_key(key('y')), vec![Effect::Quit]);
    // Full screen: Esc leaves it and nothing else.
    let mut app = live_app();
    app.on_key(key('f'));
    assert!(app.fullscreen);
    assert_eq!(app.on_key(esc), vec![]);
    assert!(!app.fullscreen);
    let mut replay = App::new(Screen::Replay);
    replay.on_key(key('f'));
    assert_eq!(replay.on_key(esc), vec![]);
    assert!(!replay.fullscreen && replay.screen == Screen::Replay);
    // Out of full screen, Esc in a replay goes back to the list.
    assert_eq!(replay.on_key(esc), vec![Effect::OpenBrowser]);
    // The list is the top: Esc does not quit it; q does.
    let mut list = App::new(Screen::Browser);
    assert_eq!(list.on_key(esc), vec![]);
    assert_eq!(list.on_key(key('q')), vec![Effect::Quit]);
}

#[test]
fn replay_plays_at_the_recorded_pace() {
    let mut app = App::new(Screen::Replay);
    let steps: Vec<StepRow> = (1..=3)
        .map(|i| step_row(i, json!({"action": "wait", "duration": 1}), true))
        .collect();
    app.load_replay(&session_row("s", "succeeded", 3, "t"), &steps);
    assert_eq!(app.next_play_delay(), None, "not playing yet");
    app.on_key(key('4'));
    assert_eq!(
        app.next_play_delay(),
        Some(std::time::Duration::from_millis(375)),
        "1.5 s recorded gap at 4x"
    );
    app.play_tick();
    app.play_tick();
    assert_eq!(
        (app.selected(), app.playing),
        (Some(2), None),
        "stops at the end"
    );
}

#[test]
fn replay_says_where_it_is_and_how_fast_it_plays() {
    let mut app = App::new(Screen::Replay);
    let steps: Vec<StepRow> = (1..=25)
        .map(|i| step_row(i, json!({"action": "wait", "duration": 1}), true))
        .collect();
    app.load_replay(&session_row("s", "succeeded", 25, "t"), &steps);
    let screen = draw(&app, 140, 36);
    assert!(screen.contains("❚❚ 1x"), "{screen}");
    assert!(screen.contains("step 1/25"), "{screen}");
    assert!(screen.contains("space  play"), "{screen}");
    app.on_key(KeyEvent::new(KeyCode::PageDown, KeyModifiers::NONE));
    assert!(draw(&app, 140, 36).contains("step 11/25"));
    app.on_key(key('+'));
    app.on_key(key(' '));
    let screen = draw(&app, 140, 36);
    assert!(screen.contains("▶ 2x"), "{screen}");
    assert!(screen.contains("space  pause"), "{screen}");
    app.on_key(key('-'));
    app.on_key(key('-'));
    assert!(draw(&app, 140, 36).contains("▶ ½x"));
    app.on_key(KeyEvent::new(KeyCode::End, KeyModifiers::NONE));
    app.on_key(KeyEvent::new(KeyCode::PageUp, KeyModifiers::NONE));
    assert!(draw(&app, 140, 36).contains("step 15/25"));
    app.on_key(KeyEvent::new(KeyCode::Home, KeyModifiers::NONE));
    assert!(draw(&app, 140, 36).contains("step 1/25"));
    // Y copies the session id.
    assert_eq!(
        app.on_key(key('Y')),
        vec![Effect::Copy {
            text: "s".into(),
            what: "the session id"
        }]
    );
}

#[test]
fn the_screen_says_what_is_going_on() {
    let mut app = live_app();
    // The task is always in sight.
    let screen = draw(&app, 160, 48);
    assert!(
        screen.contains("task: Open a terminal and write the date into ~/today.txt"),
        "{screen}"
    );
    // The step in flight counts up.
    app.elapsed_ms = 10_000;
    app.on_event(&Event::StepStarted { step: 4 });
    app.elapsed_ms = 12_500;
    assert!(draw(&app, 160, 48).contains("2.5s…"));
    // A question waits: the status says so, not "running".
    app.on_event(&Event::AwaitingApproval {
        step: 4,
        index: 0,
        action: Action::Screenshot,
    });
    let screen = draw(&app, 160, 48);
    assert!(screen.contains("? approve step 4 (y/n)"), "{screen}");
    assert!(!screen.contains("● running"), "{screen}");
    assert_eq!(app.on_key(key('n')), vec![Effect::Send(Command::Deny)]);
    // A long summary is cut with "…", not silently.
    let long = "x".repeat(300);
    app.on_event(&Event::ModelReply {
        step: 4,
        thought: None,
        text: Some(long),
        calls: vec![],
        usage: Usage::default(),
        model_ms: 1.0,
        attempts: 1,
        exchange: None,
    });
    app.on_event(&Event::StepFinished {
        step: 4,
        frame: frame(4),
        step_ms: 10.0,
    });
    assert!(draw(&app, 160, 48).contains("answer: xxxxx"));
    assert!(draw(&app, 160, 48).contains("x…"));
    // y copies the view URL, o opens it.
    assert_eq!(
        app.on_key(key('y')),
        vec![Effect::Copy {
            text: "http://127.0.0.1:35001/vnc.html?token=…".into(),
            what: "the view URL"
        }]
    );
    assert_eq!(
        app.on_key(key('o')),
        vec![Effect::OpenUrl(
            "http://127.0.0.1:35001/vnc.html?token=…".into()
        )]
    );
    // After the run, help lists only what still works.
    finish(&mut app, Status::Failed, EndedBy::StepLimit, None, None);
    app.view_url = None;
    app.on_key(key('?'));
    let screen = draw(&app, 160, 48);
    assert!(!screen.contains("pause; again to resume"), "{screen}");
    assert!(screen.contains("the sessions list"), "{screen}");
    app.on_key(key('?'));
    // The desktop is gone: y copies the session id, o says why it cannot open.
    assert_eq!(
        app.on_key(key('y')),
        vec![Effect::Copy {
            text: "20261122-101500-abc123".into(),
            what: "the session id"
        }]
    );
    assert_eq!(app.on_key(key('o')), vec![]);
    assert!(draw(&app, 160, 48).contains("no live view to open"));
}

#[test]
fn dollars_are_shown_where_the_price_is_known() {
    let mut app = live_app();
    assert!(!draw(&app, 160, 48).contains('$'));
    app.header.price = Some(crate::model::price::Price {
        input: 3.0,
        output: 15.0,
    });
    let screen = draw(&app, 160, 48);
    assert!(screen.contains(" tok $0.0"), "{screen}");
}

#[test]
fn osc52_carries_the_text_in_base64() {
    assert_eq!(super::osc52("hi"), "\x1b]52;c;aGk=\x07");
}

#[test]
fn the_sessions_list_filters_sorts_and_deletes_with_a_question() {
    let mut app = App::new(Screen::Browser);
    let mut failed = session_row(
        "20261122-094012-77e0c1",
        "failed",
        30,
        "Find the cheapest flight",
    );
    failed.error = Some("the step limit (30) was reached".into());
    failed.created_at -= 1000;
    let mut old = session_row(
        "20261121-170301-0b9f4d",
        "interrupted",
        7,
        "Rename the files",
    );
    old.created_at -= 2000;
    old.error = None;
    let mut good = session_row("20261122-101500-abc123", "succeeded", 4, "Open a terminal");
    good.error = None;
    app.sessions = vec![good, failed, old];
    let screen = draw(&app, 160, 14);
    assert!(screen.contains("sessions · 3 · by newest"), "{screen}");
    assert!(screen.contains("the step limit (30) was"), "{screen}");
    for c in "/limit".chars() {
        app.on_key(key(c));
    }
    let screen = draw(&app, 160, 14);
    assert!(screen.contains("1 of 3"), "{screen}");
    assert!(screen.contains("filter: limit"), "{screen}");
    assert!(!screen.contains("abc123"), "{screen}");
    app.on_key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE));
    assert_eq!(
        app.on_key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE)),
        vec![Effect::OpenReplay("20261122-094012-77e0c1".into())]
    );
    // Esc clears the filter; it does not leave the list.
    assert_eq!(
        app.on_key(KeyEvent::new(KeyCode::Esc, KeyModifiers::NONE)),
        vec![]
    );
    assert!(draw(&app, 160, 14).contains("sessions · 3 · by newest"));
    app.on_key(key('s'));
    assert_eq!(app.sort.label(), "status");
    assert_eq!(app.selected_session().unwrap().status, "failed");
    // Delete asks; only y deletes.
    assert_eq!(app.on_key(key('d')), vec![]);
    assert!(draw(&app, 160, 14).contains("y deletes"));
    assert_eq!(app.on_key(key('n')), vec![]);
    assert!(draw(&app, 160, 14).contains("kept 20261122-094012-77e0c1"));
    app.on_key(key('d'));
    assert_eq!(
        app.on_key(key('y')),
        vec![Effect::DeleteSession("20261122-094012-77e0c1".into())]
    );
}

#[test]
fn the_wheel_scrolls_and_a_click_selects_a_row() {
    use crossterm::event::{MouseButton, MouseEvent, MouseEventKind};
    let mouse = |kind, column, row| MouseEvent {
        kind,
        column,
        row,
        modifiers: KeyModifiers::NONE,
    };
    let mut app = App::new(Screen::Replay);
    let steps: Vec<StepRow> = (1..=6)
        .map(|i| step_row(i, json!({"action": "wait", "duration": 1}), true))
        .collect();
    app.load_replay(&session_row("s", "succeeded", 6, "t"), &steps);
    let size = ratatui::layout::Rect::new(0, 0, 140, 36);
    let areas = view::layout(size, &app);
    // Row 3 of the timeline (inside its border) is step 4.
    app.on_mouse(
        mouse(
            MouseEventKind::Down(MouseButton::Left),
            areas.timeline.x + 5,
            areas.timeline.y + 4,
        ),
        &areas,
    );
    assert_eq!(app.selected(), Some(3));
    app.on_mouse(mouse(MouseEventKind::ScrollDown, 1, 1), &areas);
    assert_eq!(app.selected(), Some(4));
    app.on_mouse(mouse(MouseEventKind::ScrollUp, 1, 1), &areas);
    app.on_mouse(mouse(MouseEventKind::ScrollUp, 1, 1), &areas);
    assert_eq!(app.selected(), Some(2));
    // A click outside the timeline selects nothing.
    app.on_mouse(
        mouse(
            MouseEventKind::Down(MouseButton::Left),
            areas.shot.x + 2,
            areas.shot.y + 2,
        ),
        &areas,
    );
    assert_eq!(app.selected(), Some(2));
    // The sessions list: a click on the second row selects it.
    let mut list = App::new(Screen::Browser);
    list.sessions = vec![
        session_row("a", "succeeded", 1, "one"),
        session_row("b", "failed", 2, "two"),
    ];
    let areas = view::layout(size, &list);
    list.on_mouse(
        mouse(MouseEventKind::Down(MouseButton::Left), 5, areas.shot.y + 3),
        &areas,
    );
    assert_eq!(list.selected_session().map(|s| s.id.as_str()), Some("b"));
}
