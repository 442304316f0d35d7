//! Drawing: a pure function of [`App`] and the encoded screenshot. Wide terminals get the
//! screenshot beside the timeline; narrow ones (80x24) stack them.

use super::app::{App, RunState, Screen};
use super::keys::{self, Cmd};
use super::shot::Shots;
use crate::agent::Status;
use crate::task::check::Verdict;
use ratatui::Frame;
use ratatui::layout::{Alignment, Constraint, Direction, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::{Line, Span, Text};
use ratatui::widgets::{
    Block, Borders, Clear, List, ListItem, ListState, Paragraph, Row, Table, TableState, Wrap,
};

/// Where everything goes on a terminal of this size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Areas {
    pub status: Rect,
    /// The screenshot pane (with its border).
    pub shot: Rect,
    pub timeline: Rect,
    pub detail: Rect,
    pub footer: Rect,
}

/// The layout: also used by the runner to know the image size before drawing.
pub fn layout(area: Rect, app: &App) -> Areas {
    let rows = Layout::default()
        .direction(Direction::Vertical)
        .constraints([
            Constraint::Length(1),
            Constraint::Min(3),
            Constraint::Length(2),
        ])
        .split(area);
    let (status, main, footer) = (rows[0], rows[1], rows[2]);
    if app.fullscreen || app.screen == Screen::Browser {
        return Areas {
            status,
            shot: main,
            timeline: Rect::default(),
            detail: Rect::default(),
            footer,
        };
    }
    if main.width >= 110 {
        let panel = (main.width * 36 / 100).clamp(40, 64);
        let cols = Layout::default()
            .direction(Direction::Horizontal)
            .constraints([Constraint::Min(20), Constraint::Length(panel)])
            .split(main);
        let right = Layout::default()
            .direction(Direction::Vertical)
            .constraints([Constraint::Percentage(55), Constraint::Percentage(45)])
            .split(cols[1]);
        Areas {
            status,
            shot: cols[0],
            timeline: right[0],
            detail: right[1],
            footer,
        }
    } else {
        let parts = Layout::default()
            .direction(Direction::Vertical)
            .constraints([Constraint::Percentage(58), Constraint::Percentage(42)])
            .split(main);
        let bottom = Layout::default()
            .direction(Direction::Horizontal)
            .constraints([Constraint::Percentage(55), Constraint::Percentage(45)])
            .split(parts[1]);
        Areas {
            status,
            shot: parts[0],
            timeline: bottom[0],
            detail: bottom[1],
            footer,
        }
    }
}

/// The image area inside the screenshot pane's border.
pub fn image_area(shot: Rect) -> Rect {
    Block::default().borders(Borders::ALL).inner(shot)
}

fn state_span(app: &App) -> Span<'static> {
    // A question the loop waits on comes first: the agent is not running, it waits for you.
    if let Some(ask) = &app.awaiting
        && app.screen == Screen::Live
        && app.run != RunState::Finished
    {
        let text = match ask.kind {
            super::app::AskKind::Approve => format!("? approve step {} (y/n)", ask.step),
            super::app::AskKind::Safety => format!("? safety check, step {} (y/n)", ask.step),
            super::app::AskKind::Help => "? the agent asks for help".to_owned(),
        };
        return Span::styled(
            text,
            Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD),
        );
    }
    match (app.screen, app.run, app.status) {
        (Screen::Browser, _, _) => Span::styled("sessions", Style::new().fg(Color::Cyan)),
        (Screen::Ask, _, _) => Span::styled("new task", Style::new().fg(Color::Cyan)),
        (Screen::Replay, _, Some(s)) => {
            Span::styled(format!("replay · {s}"), Style::new().fg(Color::Cyan))
        }
        (_, RunState::Starting, _) => Span::styled("● starting", Style::new().fg(Color::Yellow)),
        (_, RunState::Running, _) => Span::styled("● running", Style::new().fg(Color::Green)),
        (_, RunState::Pausing, _) => Span::styled("◐ pausing", Style::new().fg(Color::Yellow)),
        (_, RunState::Paused, _) => Span::styled(
            "❚❚ paused",
            Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD),
        ),
        (_, RunState::TakenOver, _) => Span::styled(
            "✋ taken over",
            Style::new().fg(Color::Magenta).add_modifier(Modifier::BOLD),
        ),
        (_, RunState::Stopping, _) => Span::styled("■ stopping", Style::new().fg(Color::Yellow)),
        (_, RunState::Finished, Some(Status::Succeeded)) => Span::styled(
            "✓ succeeded",
            Style::new().fg(Color::Green).add_modifier(Modifier::BOLD),
        ),
        (_, RunState::Finished, Some(s)) => Span::styled(
            format!("✗ {s}"),
            Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        ),
        (_, RunState::Finished, None) => Span::raw("finished"),
    }
}

/// "4x", "½x", "¼x".
fn speed_text(speed: f64) -> String {
    match speed {
        s if (s - 0.5).abs() < 1e-9 => "½x".into(),
        s if (s - 0.25).abs() < 1e-9 => "¼x".into(),
        s => format!("{s:.0}x"),
    }
}

fn tokens(n: u64) -> String {
    if n >= 10_000 {
        format!("{:.1}k", n as f64 / 1000.0)
    } else {
        n.to_string()
    }
}

fn clock(ms: u64) -> String {
    let s = ms / 1000;
    format!("{:02}:{:02}", s / 60, s % 60)
}

fn status_bar(f: &mut Frame, area: Rect, app: &App) {
    let sep = Span::styled(" │ ", Style::new().fg(Color::DarkGray));
    let mut spans = vec![
        Span::styled(" selfagent", Style::new().add_modifier(Modifier::BOLD)),
        sep.clone(),
        state_span(app),
    ];
    if let Some(g) = &app.grade {
        let (text, color) = match g.passed {
            Some(true) => (format!("PASSED {:.2}", g.score), Color::Green),
            Some(false) => (format!("FAILED {:.2}", g.score), Color::Red),
            None => ("NOT GRADED".to_owned(), Color::Yellow),
        };
        spans.extend([
            sep.clone(),
            Span::styled(text, Style::new().fg(color).add_modifier(Modifier::BOLD)),
        ]);
    }
    if app.screen == Screen::Replay {
        let (text, color) = match app.playing {
            Some(speed) => (format!("▶ {} ", speed_text(speed)), Color::Green),
            None => (format!("❚❚ {} ", speed_text(app.speed)), Color::DarkGray),
        };
        spans.extend([sep.clone(), Span::styled(text, Style::new().fg(color))]);
    }
    if app.screen != Screen::Browser && app.screen != Screen::Ask {
        // Replay: the step on screen, of the last; live: the newest, of the limit.
        let (step, max) = if app.screen == Screen::Replay {
            let on = app.selected().map_or(0, |i| app.steps[i].idx);
            let last = app.steps.last().map_or(0, |s| s.idx);
            (on, format!("/{last}"))
        } else {
            let step = app.steps.last().map_or(0, |s| s.idx);
            let max = if app.header.max_steps > 0 {
                format!("/{}", app.header.max_steps)
            } else {
                String::new()
            };
            (step, max)
        };
        spans.extend([
            sep.clone(),
            Span::raw(format!("step {step}{max}")),
            sep.clone(),
            Span::raw(format!(
                "{}+{} tok{}",
                tokens(app.tokens.0),
                tokens(app.tokens.1),
                app.header
                    .price
                    .map(|p| format!(
                        " {}",
                        crate::model::price::dollars(p.cost(app.tokens.0, app.tokens.1))
                    ))
                    .unwrap_or_default()
            )),
            sep.clone(),
            Span::raw(clock(app.elapsed_ms)),
        ]);
        if !app.header.model.is_empty() {
            let model = match app.header.dialect.as_str() {
                "" => app.header.model.clone(),
                d => format!("{} ({d})", app.header.model),
            };
            spans.extend([sep.clone(), Span::raw(model)]);
        }
        if !app.header.sandbox.is_empty() {
            spans.extend([
                sep.clone(),
                Span::raw(format!(
                    "desktop {}",
                    crate::text::prefix(&app.header.sandbox, 12)
                )),
            ]);
        }
        // Last: the real URL (with its token) is longer than most terminals and useless
        // cut, so the keys that use it are shown instead: y copies it whole, o opens it;
        // it is printed below the UI at exit while the desktop is still there.
        if app.view_url.is_some() && app.screen == Screen::Live {
            spans.extend([
                sep.clone(),
                Span::styled(
                    "view: y copy · o open".to_owned(),
                    Style::new().fg(Color::Cyan),
                ),
            ]);
        }
    }
    f.render_widget(
        Paragraph::new(Line::from(spans)).style(Style::new().bg(Color::Black)),
        area,
    );
}

fn shot_pane(f: &mut Frame, area: Rect, app: &App, shots: &Shots) {
    let step = app.selected().map(|i| &app.steps[i]);
    let which = match (app.screen, app.cursor, step) {
        (Screen::Live, None, _) => "latest".to_owned(),
        (_, _, Some(s)) => format!(
            "step {}, {}",
            s.idx,
            if app.show_before { "before" } else { "after" }
        ),
        _ => String::new(),
    };
    let title = format!(
        " screen {}x{} · {which} ",
        app.header.width, app.header.height
    );
    let mut block = Block::default()
        .borders(Borders::ALL)
        .title(title)
        .border_style(Style::new().fg(Color::DarkGray));
    // The task, always in sight (cut to the pane, whole in the details).
    if !app.header.instruction.is_empty() {
        let room = area.width.saturating_sub(12) as usize;
        block = block.title_bottom(Line::styled(
            format!(
                " task: {} ",
                crate::text::cut(&app.header.instruction, room)
            ),
            Style::new().fg(Color::Gray),
        ));
    }
    let inner = block.inner(area);
    f.render_widget(block, area);
    let shown = app.shown_frame();
    let placeholder = |f: &mut Frame, text: String| {
        let y = inner.y + inner.height / 2;
        f.render_widget(
            Paragraph::new(text)
                .alignment(Alignment::Center)
                .style(Style::new().fg(Color::DarkGray)),
            Rect::new(inner.x, y, inner.width, 1.min(inner.height)),
        );
    };
    match (&shown, &shots.current) {
        (None, _) => placeholder(f, "no screenshot yet".into()),
        (Some((frame, marks)), Some((key, protocol)))
            if *key == Shots::key_for(frame, marks, inner) =>
        {
            f.render_widget(ratatui_image::Image::new(protocol), inner);
        }
        (Some(_), Some((key, protocol))) if key.cols <= inner.width && key.rows <= inner.height => {
            // The new frame is still being encoded: keep the previous one up.
            f.render_widget(ratatui_image::Image::new(protocol), inner);
        }
        (Some((frame, marks)), _) => {
            let what = if shots.has_graphics() {
                "rendering…"
            } else {
                "screenshot"
            };
            let marked = marks.iter().filter(|m| !m.points.is_empty()).count();
            let note = if marked > 0 {
                format!(", {marked} marked")
            } else {
                String::new()
            };
            let err = shots
                .error
                .as_deref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default();
            placeholder(
                f,
                format!(
                    "[{what} {}{note}]{err}",
                    frame.key().chars().take(14).collect::<String>()
                ),
            );
        }
    }
}

fn timeline(f: &mut Frame, area: Rect, app: &App) {
    if area.height < 3 {
        return;
    }
    let width = area.width.saturating_sub(4) as usize;
    let items: Vec<ListItem> = app
        .steps
        .iter()
        .map(|s| {
            let (mark, color) = match (s.finished, s.ok()) {
                (false, _) => ("…", Color::Yellow),
                (true, true) => ("✓", Color::Green),
                (true, false) => ("✗", Color::Red),
            };
            // The step in flight counts up.
            let running = (!s.finished && !s.cut_short && app.run != RunState::Finished)
                .then_some(s.began_ms)
                .flatten()
                .map(|began| {
                    format!(
                        "{:.1}s…",
                        app.elapsed_ms.saturating_sub(began) as f64 / 1000.0
                    )
                });
            let time = running
                .or_else(|| {
                    s.step_ms
                        .or(s.model_ms)
                        .map(|ms| format!("{:.1}s", ms / 1000.0))
                })
                .unwrap_or_default();
            let room = width.saturating_sub(4 + 2 + time.chars().count() + 1);
            let marked = if s.notes.is_empty() {
                s.summary()
            } else {
                format!("» {}", s.summary())
            };
            let summary = crate::text::cut(&marked, room);
            let pad = room.saturating_sub(summary.chars().count());
            ListItem::new(Line::from(vec![
                Span::styled(format!("{:>3} ", s.idx), Style::new().fg(Color::DarkGray)),
                Span::styled(format!("{mark} "), Style::new().fg(color)),
                Span::raw(summary),
                Span::raw(" ".repeat(pad + 1)),
                Span::styled(time, Style::new().fg(Color::DarkGray)),
            ]))
        })
        .collect();
    let n = app.steps.len();
    let title = format!(" timeline · {n} step{} ", if n == 1 { "" } else { "s" });
    let list = List::new(items)
        .block(
            Block::default()
                .borders(Borders::ALL)
                .title(title)
                .border_style(Style::new().fg(Color::DarkGray)),
        )
        .highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    let mut state = ListState::default();
    state.select(app.selected());
    f.render_stateful_widget(list, area, &mut state);
}

fn detail(f: &mut Frame, area: Rect, app: &App) {
    if area.height < 3 {
        return;
    }
    let mut lines: Vec<Line> = Vec::new();
    let title = match app.selected().map(|i| &app.steps[i]) {
        None => {
            lines.push(Line::from(format!("task: {}", app.header.instruction)));
            " details ".to_owned()
        }
        Some(s) => {
            let mut facts = Vec::new();
            if let Some(ms) = s.model_ms {
                facts.push(format!("model {:.1}s", ms / 1000.0));
            }
            if s.tokens != (0, 0) {
                let cost = app
                    .header
                    .price
                    .map(|p| {
                        format!(
                            " {}",
                            crate::model::price::dollars(p.cost(s.tokens.0, s.tokens.1))
                        )
                    })
                    .unwrap_or_default();
                facts.push(format!("{}+{} tok{cost}", s.tokens.0, s.tokens.1));
            }
            if let Some(ms) = s.settle_ms {
                facts.push(format!("settle {ms:.0}ms"));
            }
            if s.retries > 0 {
                facts.push(format!("{} retries", s.retries));
            }
            if !facts.is_empty() {
                lines.push(Line::styled(
                    facts.join(" · "),
                    Style::new().fg(Color::DarkGray),
                ));
            }
            if let Some(t) = &s.thought {
                lines.push(Line::from(vec![
                    Span::styled("thought: ", Style::new().fg(Color::Cyan)),
                    Span::raw(t.clone()),
                ]));
            }
            for a in &s.actions {
                let mut spans = vec![
                    Span::raw(if a.ok { "▸ " } else { "✗ " }),
                    Span::raw(a.desc.clone()),
                ];
                if let Some(e) = &a.error {
                    spans.push(Span::styled(format!(": {e}"), Style::new().fg(Color::Red)));
                } else if let Some(ms) = a.act_ms {
                    spans.push(Span::styled(
                        format!("  {ms:.1} ms"),
                        Style::new().fg(Color::DarkGray),
                    ));
                }
                lines.push(Line::from(spans));
            }
            if s.actions.is_empty()
                && let Some(t) = &s.text
                && s.finished
            {
                lines.push(Line::from(vec![
                    Span::styled("answer: ", Style::new().fg(Color::Green)),
                    Span::raw(t.clone()),
                ]));
            }
            for n in &s.notes {
                lines.push(Line::styled(n.clone(), Style::new().fg(Color::Magenta)));
            }
            if !s.finished && s.model_ms.is_none() {
                lines.push(Line::styled(
                    "waiting for the model…",
                    Style::new().fg(Color::Yellow),
                ));
            }
            format!(" step {} ", s.idx)
        }
    };
    if app.run == RunState::Finished
        && let Some(o) = &app.outcome_text
        && app.selected() == app.steps.len().checked_sub(1)
    {
        let color = if app.status == Some(Status::Succeeded) {
            Color::Green
        } else {
            Color::Red
        };
        lines.push(Line::styled(format!("end: {o}"), Style::new().fg(color)));
    }
    if let Some(g) = &app.grade
        && app.selected() == app.steps.len().checked_sub(1)
    {
        lines.push(Line::styled(
            format!("grade: {}", g.summary()),
            Style::new().add_modifier(Modifier::BOLD),
        ));
        for leaf in g.result.iter().flat_map(|r| r.leaves()) {
            let color = match leaf.verdict {
                Verdict::Passed => Color::Green,
                Verdict::Failed => Color::Red,
                Verdict::Error => Color::Yellow,
            };
            lines.push(Line::from(vec![
                Span::styled(format!(" {} ", leaf.verdict.mark()), Style::new().fg(color)),
                Span::raw(leaf.check.clone()),
                Span::styled(
                    format!("  {}", leaf.detail),
                    Style::new().fg(Color::DarkGray),
                ),
            ]));
        }
    }
    f.render_widget(
        Paragraph::new(Text::from(lines))
            .wrap(Wrap { trim: false })
            .block(
                Block::default()
                    .borders(Borders::ALL)
                    .title(title)
                    .border_style(Style::new().fg(Color::DarkGray)),
            ),
        area,
    );
}

/// The footer's keys: the bindings' hints (see `keys`), toggled labels as the state says.
fn hints(app: &App) -> Vec<(&'static str, &'static str)> {
    keys::bindings(app.view())
        .iter()
        .filter_map(|b| {
            let hint = b.hint?;
            let on = match b.cmd {
                Cmd::Pause => matches!(
                    app.run,
                    RunState::Paused | RunState::Pausing | RunState::TakenOver
                ),
                Cmd::Play => app.playing.is_some(),
                _ => false,
            };
            Some((hint.keys, hint.toggled.filter(|_| on).unwrap_or(hint.label)))
        })
        .collect()
}

fn footer(f: &mut Frame, area: Rect, app: &App) {
    let notice = match (&app.input, app.screen) {
        (Some(text), Screen::Live) => Line::from(vec![
            Span::styled("message to the agent> ", Style::new().fg(Color::Cyan)),
            Span::raw(format!("{text}▏")),
        ]),
        _ if app.flash.is_some() => Line::styled(
            app.flash.clone().unwrap_or_default(),
            Style::new().fg(Color::Cyan),
        ),
        _ => match (&app.notice, app.run, &app.outcome_text) {
            (_, RunState::Finished, Some(o)) if app.screen == Screen::Live => {
                let color = if app.status == Some(Status::Succeeded) {
                    Color::Green
                } else {
                    Color::Red
                };
                Line::styled(o.clone(), Style::new().fg(color))
            }
            (Some(n), _, _) => Line::styled(n.clone(), Style::new().fg(Color::Yellow)),
            _ => Line::raw(""),
        },
    };
    // Narrow terminals get the compact form.
    let (pad, gap) = if area.width < 100 {
        ("", " ")
    } else {
        (" ", "  ")
    };
    let keys: Vec<Span> = hints(app)
        .into_iter()
        .flat_map(|(k, v)| {
            [
                Span::styled(
                    format!("{pad}{k}{pad}"),
                    Style::new().fg(Color::Black).bg(Color::Gray),
                ),
                Span::raw(format!(" {v}{gap}")),
            ]
        })
        .collect();
    let rows = Layout::default()
        .direction(Direction::Vertical)
        .constraints([Constraint::Length(1), Constraint::Length(1)])
        .split(area);
    f.render_widget(Paragraph::new(notice), rows[0]);
    f.render_widget(Paragraph::new(Line::from(keys)), rows[1]);
}

fn centered(area: Rect, width: u16, height: u16) -> Rect {
    let w = width.min(area.width);
    let h = height.min(area.height);
    Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    )
}

fn help(f: &mut Frame, area: Rect, app: &App) {
    let keys = keys::help(app.view());
    let mut lines: Vec<Line> = keys
        .iter()
        .map(|(k, v)| {
            Line::from(vec![
                Span::styled(
                    format!("{k:>16}  "),
                    Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD),
                ),
                Span::raw(*v),
            ])
        })
        .collect();
    if !app.log_path.is_empty() {
        lines.push(Line::raw(""));
        lines.push(Line::from(vec![
            Span::styled(format!("{:>16}  ", "log"), Style::new().fg(Color::DarkGray)),
            Span::raw(app.log_path.clone()),
        ]));
    }
    let r = centered(area, 88, lines.len() as u16 + 4);
    f.render_widget(Clear, r);
    f.render_widget(
        Paragraph::new(Text::from(lines))
            .wrap(Wrap { trim: false })
            .block(
                Block::default()
                    .borders(Borders::ALL)
                    .title(" keys · any key closes "),
            ),
        r,
    );
}

fn browser(f: &mut Frame, area: Rect, app: &App) {
    let header = Row::new([
        "session", "created", "status", "steps", "took", "tokens", "model", "task", "why",
    ])
    .style(Style::new().add_modifier(Modifier::BOLD));
    let shown = app.visible_sessions();
    let rows: Vec<Row> = shown
        .iter()
        .map(|&i| &app.sessions[i])
        .map(|s| {
            let color = match s.status.as_str() {
                "succeeded" => Color::Green,
                "running" => Color::Yellow,
                "failed" | "error" | "interrupted" => Color::Red,
                _ => Color::Gray,
            };
            Row::new(vec![
                Span::raw(s.id.clone()),
                Span::raw(crate::time::short(s.created_at)),
                Span::styled(s.status.clone(), Style::new().fg(color)),
                Span::raw(s.steps.to_string()),
                Span::raw(
                    s.wall_ms
                        .map(|ms| clock(ms.max(0) as u64))
                        .unwrap_or_default(),
                ),
                Span::raw(tokens((s.tokens_in + s.tokens_out) as u64)),
                Span::raw(s.model.clone().unwrap_or_default()),
                Span::raw(s.instruction.clone()),
                Span::styled(
                    s.error.clone().unwrap_or_default(),
                    Style::new().fg(Color::DarkGray),
                ),
            ])
        })
        .collect();
    let table = Table::new(
        rows,
        [
            Constraint::Length(22),
            Constraint::Length(16),
            Constraint::Length(11),
            Constraint::Length(5),
            Constraint::Length(5),
            Constraint::Length(7),
            Constraint::Length(14),
            Constraint::Fill(1),
            Constraint::Fill(1),
        ],
    )
    .header(header)
    .block(
        Block::default()
            .borders(Borders::ALL)
            .title(browser_title(app, shown.len())),
    )
    .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    let mut state = TableState::default();
    state.select((!shown.is_empty()).then_some(app.session_cursor));
    f.render_stateful_widget(table, area, &mut state);
    if shown.is_empty() {
        let text = if app.sessions.is_empty() {
            "no recorded sessions yet".to_owned()
        } else {
            format!("no session matches '{}' (esc clears)", app.filter)
        };
        f.render_widget(
            Paragraph::new(text).alignment(Alignment::Center).dim(),
            centered(area, 60, 1),
        );
    }
}

/// " sessions · 3 of 40 · newest · filter: tars▏ ".
fn browser_title(app: &App, shown: usize) -> String {
    let count = if shown == app.sessions.len() {
        shown.to_string()
    } else {
        format!("{shown} of {}", app.sessions.len())
    };
    let filter = match (app.filtering, app.filter.is_empty()) {
        (true, _) => format!(" · filter: {}▏", app.filter),
        (false, false) => format!(" · filter: {}", app.filter),
        (false, true) => String::new(),
    };
    format!(" sessions · {count} · by {}{filter} ", app.sort.label())
}

/// Draws the whole screen.
pub fn draw(f: &mut Frame, app: &App, shots: &Shots) {
    let area = f.area();
    let a = layout(area, app);
    status_bar(f, a.status, app);
    match app.screen {
        Screen::Browser => browser(f, a.shot, app),
        Screen::Ask => {
            let r = centered(a.shot, 76, 5);
            let text = app.input.clone().unwrap_or_default();
            f.render_widget(Clear, r);
            f.render_widget(
                Paragraph::new(vec![
                    Line::raw(""),
                    Line::from(vec![Span::raw(" > "), Span::raw(format!("{text}▏"))]),
                ])
                .block(
                    Block::default()
                        .borders(Borders::ALL)
                        .title(" what should the agent do? "),
                ),
                r,
            );
        }
        Screen::Live | Screen::Replay => {
            shot_pane(f, a.shot, app, shots);
            timeline(f, a.timeline, app);
            detail(f, a.detail, app);
        }
    }
    footer(f, a.footer, app);
    if let Some(ask) = &app.awaiting {
        use crate::tui::app::AskKind;
        let (title, hint, color) = match ask.kind {
            AskKind::Approve => (
                format!(" step {}: allow this action? ", ask.step),
                " y  allow     n  deny",
                Color::Yellow,
            ),
            AskKind::Safety => (
                format!(" step {}: the provider raised a safety check ", ask.step),
                " y  acknowledge and go on     n  stop here",
                Color::Red,
            ),
            AskKind::Help => (
                format!(" step {}: the agent asks for help ", ask.step),
                " m  answer     t  take over     x  stop",
                Color::Magenta,
            ),
        };
        let mut lines: Vec<Line> = ask
            .lines
            .iter()
            .map(|l| Line::raw(format!(" {l}")))
            .collect();
        lines.push(Line::raw(""));
        lines.push(Line::styled(
            hint,
            Style::new().add_modifier(Modifier::BOLD),
        ));
        let width: u16 = if ask.kind == AskKind::Approve { 64 } else { 72 };
        // Rows once wrapped inside the borders.
        let inner = usize::from(width.saturating_sub(2).max(1));
        let rows: usize = lines.iter().map(|l| l.width().max(1).div_ceil(inner)).sum();
        let height = (rows as u16 + 2).min(area.height);
        let r = centered(area, width, height);
        f.render_widget(Clear, r);
        f.render_widget(
            Paragraph::new(lines)
                .wrap(ratatui::widgets::Wrap { trim: false })
                .block(
                    Block::default()
                        .borders(Borders::ALL)
                        .title(title)
                        .border_style(Style::new().fg(color)),
                ),
            r,
        );
    }
    if app.help {
        help(f, area, app);
    }
}
