//! The terminal UI: watch and steer a live episode, replay recorded ones, browse sessions.
//!
//! - [`app`]: the state, fed by the loop's events (or a recording) and by keys.
//! - [`view`]: drawing, a pure function of the state.
//! - [`shot`]: screenshots for the terminal (kitty, sixel, iTerm2 or halfblocks), encoded
//!   off the UI task.
//!
//! The runner here owns the terminal and one `select!` loop over terminal input, the loop's
//! events, finished encodings and a clock tick. Slow work (starting a desktop, encoding an
//! image, reading frames) never runs on it.

pub mod app;
pub mod keys;
pub mod shot;
pub mod view;

#[cfg(test)]
mod snapshots_tests;

use crate::agent::{self, Command, Event};
use crate::episode::{self, Hooks, Plan};
use crate::record::Db;
use crate::sandbox::{Engine, SandboxSpec};
use crate::settings::Resolved;
use crate::task::Task;
use anyhow::Context;
use app::{App, Effect, RunState, Screen};
use crossterm::event::{Event as TermEvent, EventStream, KeyEventKind};
use futures_util::StreamExt;
use ratatui::DefaultTerminal;
use shot::{Encoded, Shots};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// What a live run needs besides the resolved settings.
pub struct LiveSetup {
    pub cfg: Resolved,
    pub spec: SandboxSpec,
    pub keep: bool,
    pub instruction: Option<String>,
    /// A task file's setup, limits and checks.
    pub task: Option<Task>,
    /// Snapshot the final state of graded episodes.
    pub snapshot: Option<u64>,
    /// Where the desktop comes from.
    pub source: crate::episode::Source,
    /// Who acts: the model, a recording done again (`selfagent rerun`), a person
    /// (`selfagent demo`).
    pub driver: crate::episode::Driver,
}

/// Messages into the UI loop from the background.
enum Msg {
    Agent(Arc<Event>),
    /// The desktop is up: its id and view URL.
    Desktop {
        view_url: Option<String>,
        watch_url: Option<String>,
    },
    /// The episode is over and cleaned up (recording drained, desktop removed).
    /// The episode ended: its exit code and, when the recording stopped early, why; or
    /// why it could not run.
    Done(Result<(u8, Option<String>), String>),
}

/// Handles of a live run.
struct Live {
    control: mpsc::Sender<Command>,
    started: Instant,
    done: bool,
}

/// The terminal graphics protocol, asked once; halfblocks if the terminal does not say
/// within half a second (terminals that can do graphics answer in milliseconds). Inside
/// tmux, or with SELFAGENT_GRAPHICS=halfblocks, halfblocks without asking: tmux does not
/// pass the answers back, and the query's reader would then swallow the first keys.
fn picker() -> ratatui_image::picker::Picker {
    if std::env::var_os("TMUX").is_some()
        || std::env::var("SELFAGENT_GRAPHICS").as_deref() == Ok("halfblocks")
    {
        return ratatui_image::picker::Picker::halfblocks();
    }
    let options = ratatui_image::picker::cap_parser::QueryStdioOptions {
        timeout: Duration::from_millis(500),
        ..Default::default()
    };
    ratatui_image::picker::Picker::from_query_stdio_with_options(options)
        .unwrap_or_else(|_| ratatui_image::picker::Picker::halfblocks())
}

struct Runner {
    app: App,
    shots: Shots,
    db_path: PathBuf,
    db: Option<Arc<Mutex<Db>>>,
    encoded_tx: mpsc::UnboundedSender<Encoded>,
    encoded_rx: mpsc::UnboundedReceiver<Encoded>,
    msg_tx: mpsc::UnboundedSender<Msg>,
    msg_rx: mpsc::UnboundedReceiver<Msg>,
    live: Option<Live>,
    setup: Option<LiveSetup>,
    quit_when_done: bool,
    /// The desktop outlives the episode (`--keep`, or one that was already running): its
    /// view URL stays usable, and is printed at exit.
    keep_desktop: bool,
    /// The finished episode's exit code, as `run --headless` would exit.
    exit: Option<u8>,
    first_paint: Option<Duration>,
    first_image: Option<Duration>,
    opened: Instant,
}

impl Runner {
    fn new(app: App, picker: Option<ratatui_image::picker::Picker>, db_path: PathBuf) -> Self {
        let (encoded_tx, encoded_rx) = mpsc::unbounded_channel();
        let (msg_tx, msg_rx) = mpsc::unbounded_channel();
        Self {
            app,
            shots: Shots::new(picker),
            db_path,
            db: None,
            encoded_tx,
            encoded_rx,
            msg_tx,
            msg_rx,
            live: None,
            setup: None,
            quit_when_done: false,
            keep_desktop: false,
            exit: None,
            first_paint: None,
            first_image: None,
            opened: Instant::now(),
        }
    }

    fn open_db(&mut self) -> anyhow::Result<Arc<Mutex<Db>>> {
        if let Some(db) = &self.db {
            return Ok(db.clone());
        }
        let db = Arc::new(Mutex::new(Db::open_read(&self.db_path)?));
        self.db = Some(db.clone());
        Ok(db)
    }

    fn load_browser(&mut self) -> anyhow::Result<()> {
        let db = self.open_db()?;
        let sessions = db
            .lock()
            .map_err(|_| anyhow::anyhow!("recording lock"))?
            .sessions(500)?;
        self.app.sessions = sessions;
        self.app.session_cursor = self
            .app
            .session_cursor
            .min(self.app.visible_sessions().len().saturating_sub(1));
        self.app.screen = Screen::Browser;
        self.app.help = false;
        Ok(())
    }

    fn load_replay(&mut self, id: &str) -> anyhow::Result<()> {
        let db = self.open_db()?;
        let guard = db.lock().map_err(|_| anyhow::anyhow!("recording lock"))?;
        let session = guard.session(id)?;
        let steps = guard.steps(&session.id)?;
        let events = guard.events(&session.id)?;
        let grade = guard
            .latest_grade(&session.id)?
            .and_then(|g| serde_json::from_value(g.details).ok());
        drop(guard);
        self.app.load_replay(&session, &steps);
        self.app.attach_events(&events);
        self.app.grade = grade;
        Ok(())
    }

    /// Asks for the screenshot the current layout shows, if it is not there yet.
    fn request_image(&mut self, size: ratatui::layout::Rect) {
        if matches!(self.app.screen, Screen::Browser | Screen::Ask) {
            return;
        }
        let areas = view::layout(size, &self.app);
        let inner = view::image_area(areas.shot);
        if let Some((frame, marks)) = self.app.shown_frame() {
            let db = match frame {
                app::FrameRef::Stored { .. } => self.db.clone(),
                app::FrameRef::Png { .. } => None,
            };
            self.shots
                .request(frame, marks, inner, db, self.encoded_tx.clone());
        }
    }

    fn effects(&mut self, effects: Vec<Effect>) -> anyhow::Result<bool> {
        for e in effects {
            match e {
                Effect::Quit => match &self.live {
                    Some(live) if !live.done => {
                        self.quit_when_done = true;
                        if !matches!(self.app.run, RunState::Finished) {
                            self.app.run = RunState::Stopping;
                            self.app.notice = Some("stopping the agent, then quitting…".into());
                            let _ = live.control.try_send(Command::Stop);
                        }
                    }
                    _ => return Ok(true),
                },
                Effect::Send(cmd) => {
                    if let Some(live) = &self.live {
                        let _ = live.control.try_send(cmd);
                    }
                }
                Effect::OpenReplay(id) => {
                    if let Err(e) = self.load_replay(&id) {
                        self.app.notice = Some(e.to_string());
                    }
                }
                Effect::OpenBrowser => {
                    if let Err(e) = self.load_browser() {
                        self.app.notice = Some(e.to_string());
                    }
                }
                Effect::Start(task) => self.start_live(task),
                Effect::Copy { text, what } => {
                    use std::io::Write;
                    let mut out = std::io::stdout();
                    let _ = out
                        .write_all(osc52(&text).as_bytes())
                        .and_then(|()| out.flush());
                    self.app.flash = Some(format!("copied {what} to the clipboard (OSC 52)"));
                }
                Effect::DeleteSession(id) => {
                    let result = Db::open(&self.db_path).and_then(|mut db| db.delete_session(&id));
                    self.app.flash = Some(match result {
                        Ok((removed, kept)) => format!(
                            "deleted {id} ({} removed, {kept} shared kept)",
                            crate::output::count(removed as i64, "screenshot")
                        ),
                        Err(e) => format!("not deleted: {e}"),
                    });
                    if let Err(e) = self.load_browser() {
                        self.app.notice = Some(e.to_string());
                    }
                }
                Effect::OpenUrl(url) => {
                    self.app.flash = Some(match open_in_browser(&url) {
                        Ok(opener) => format!("opened the live view with {opener}"),
                        Err(e) => format!("{e}; y copies the URL"),
                    });
                }
            }
        }
        Ok(false)
    }

    fn start_live(&mut self, task: String) {
        let Some(mut setup) = self.setup.take() else {
            return;
        };
        self.keep_desktop = setup.keep || matches!(setup.source, episode::Source::Existing(_));
        setup.cfg.agent.instruction = task;
        let (control_tx, control_rx) = mpsc::channel(64);
        self.live = Some(Live {
            control: control_tx,
            started: Instant::now(),
            done: false,
        });
        self.app.screen = Screen::Live;
        self.app.run = RunState::Starting;
        self.app.notice = Some("starting a desktop…".into());
        let tx = self.msg_tx.clone();
        tokio::spawn(async move {
            let result = live_episode(setup, control_rx, tx.clone()).await;
            let _ = tx.send(Msg::Done(
                result
                    .map(|end| (end.exit_code(), end.recording_error))
                    .map_err(|e| format!("{e:#}")),
            ));
        });
    }

    async fn run(
        &mut self,
        terminal: &mut DefaultTerminal,
        query_graphics: bool,
    ) -> anyhow::Result<()> {
        if query_graphics {
            // Paint first, then ask the terminal about graphics (before anything reads keys).
            terminal.draw(|f| view::draw(f, &self.app, &self.shots))?;
            self.first_paint = Some(self.opened.elapsed());
            let picker = tokio::task::spawn_blocking(picker).await?;
            self.shots.set_picker(picker);
        }
        let mut input = EventStream::new();
        // SIGTERM and SIGHUP (a service manager, a closed ssh session) are a quit: the
        // agent is stopped and recorded, and the terminal is restored on the way out.
        let mut signals = crate::signals::StopSignals::new();
        let mut signalled = false;
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut play_at: Option<tokio::time::Instant> = None;
        loop {
            let size = terminal.size()?;
            self.request_image(ratatui::layout::Rect::new(0, 0, size.width, size.height));
            terminal.draw(|f| view::draw(f, &self.app, &self.shots))?;
            if self.first_paint.is_none() {
                self.first_paint = Some(self.opened.elapsed());
            }
            if self.first_image.is_none() && self.shots.current.is_some() {
                self.first_image = Some(self.opened.elapsed());
            }
            // Replay playback: the next step comes after the recorded gap.
            if self.app.screen == Screen::Replay {
                match (self.app.next_play_delay(), play_at) {
                    (Some(d), None) => play_at = Some(tokio::time::Instant::now() + d),
                    (None, _) => play_at = None,
                    _ => {}
                }
            } else {
                play_at = None;
            }
            let play = async {
                match play_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                event = input.next() => match event {
                    Some(Ok(TermEvent::Key(key))) if key.kind == KeyEventKind::Press => {
                        let effects = self.app.on_key(key);
                        if self.effects(effects)? {
                            return Ok(());
                        }
                    }
                    Some(Ok(TermEvent::Mouse(m))) => {
                        let size = terminal.size()?;
                        let areas = view::layout(
                            ratatui::layout::Rect::new(0, 0, size.width, size.height),
                            &self.app,
                        );
                        self.app.on_mouse(m, &areas);
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e.into()),
                    None => return Ok(()),
                },
                Some(msg) = self.msg_rx.recv() => match msg {
                    Msg::Agent(e) => self.app.on_event(&e),
                    Msg::Desktop { view_url, watch_url } => {
                        self.app.view_url = view_url;
                        self.app.watch_url = watch_url;
                        self.app.notice = None;
                    }
                    Msg::Done(result) => {
                        if let Some(live) = &mut self.live {
                            live.done = true;
                        }
                        self.app.run = RunState::Finished;
                        // The desktop is gone with the episode: so is its view.
                        if !self.keep_desktop {
                            self.app.view_url = None;
                            self.app.watch_url = None;
                        }
                        match result {
                            Ok((code, recording_error)) => {
                                self.exit = Some(code);
                                if let Some(e) = recording_error {
                                    self.app.notice =
                                        Some(format!("the recording stopped early: {e}"));
                                }
                            }
                            Err(e) => {
                                // It never ran (no engine, no image, a desktop that did not
                                // start): the harness failed, as headless says too.
                                self.exit = Some(episode::EXIT_HARNESS);
                                self.app.notice = Some(e);
                                if self.app.status.is_none() {
                                    self.app.status = Some(agent::Status::Error);
                                }
                            }
                        }
                        if self.quit_when_done {
                            return Ok(());
                        }
                    }
                },
                name = signals.recv() => {
                    // A second one quits at once (the terminal is still restored).
                    if signalled {
                        return Ok(());
                    }
                    signalled = true;
                    tracing::warn!("{name}: stopping the agent, then quitting");
                    if self.effects(vec![Effect::Quit])? {
                        return Ok(());
                    }
                }
                Some(enc) = self.encoded_rx.recv() => self.shots.finished(enc),
                _ = tick.tick() => {
                    if let Some(live) = &self.live
                        && !live.done
                    {
                        self.app.elapsed_ms = live.started.elapsed().as_millis() as u64;
                    }
                }
                _ = play => {
                    play_at = None;
                    self.app.play_tick();
                }
            }
        }
    }
}

/// Starts a desktop and runs one episode, reporting to the UI; cleans up after itself.
async fn live_episode(
    setup: LiveSetup,
    control: mpsc::Receiver<Command>,
    ui: mpsc::UnboundedSender<Msg>,
) -> anyhow::Result<episode::End> {
    let LiveSetup {
        mut cfg,
        spec,
        keep,
        task,
        snapshot,
        source,
        driver,
        ..
    } = setup;
    // A person is watching: safety checks and the model's calls for help are asked.
    cfg.agent.interactive = true;
    let engine = Engine::connect().await?;
    let (events_tx, mut events) = mpsc::channel::<Arc<Event>>(4096);
    let forward = {
        let ui = ui.clone();
        tokio::spawn(async move {
            while let Some(e) = events.recv().await {
                let _ = ui.send(Msg::Agent(e));
            }
        })
    };
    let desktop_ui = ui.clone();
    // A demonstration is watched and driven through its recording proxy, never around it.
    let demo = match &driver {
        crate::episode::Driver::Demo(d) => Some(d.link()),
        _ => None,
    };
    let hooks = Hooks {
        sinks: vec![events_tx],
        control,
        on_desktop: Some(Box::new(move |sandbox| {
            let view_url = match &demo {
                Some(link) => link.view_url(sandbox),
                None => sandbox.view_url(),
            };
            let _ = desktop_ui.send(Msg::Desktop {
                view_url,
                watch_url: sandbox.watch_url(),
            });
        })),
    };
    let plan = Plan {
        cfg,
        spec,
        task,
        keep,
        snapshot,
        session: None,
        calibration: None,
        driver,
        source,
    };
    let end = episode::run(&engine, plan, hooks).await;
    let _ = forward.await;
    end
}

/// The terminal in raw mode, on the alternate screen, with mouse reports (wheel and
/// clicks; hold Shift to select text as usual). `ratatui::init` restores it on panic too.
fn init_terminal() -> DefaultTerminal {
    let terminal = ratatui::init();
    let _ = crossterm::execute!(std::io::stdout(), crossterm::event::EnableMouseCapture);
    // On a panic, mouse reports off before ratatui's own hook restores the rest.
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let _ = crossterm::execute!(std::io::stdout(), crossterm::event::DisableMouseCapture);
        previous(info);
    }));
    terminal
}

fn restore_terminal() {
    let _ = crossterm::execute!(std::io::stdout(), crossterm::event::DisableMouseCapture);
    ratatui::restore();
}

/// The OSC 52 sequence that puts `text` on the terminal's clipboard (terminals and tmux
/// with `set-clipboard on` honour it, also over ssh).
pub fn osc52(text: &str) -> String {
    use base64::Engine as _;
    format!(
        "\x1b]52;c;{}\x07",
        base64::engine::general_purpose::STANDARD.encode(text)
    )
}

/// Opens `url` with the desktop's opener (`xdg-open`, `open` on macOS), detached; says
/// which, or why not.
fn open_in_browser(url: &str) -> Result<&'static str, String> {
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(opener).is_file()));
    if !found {
        return Err(format!("no {opener} here to open a browser"));
    }
    std::process::Command::new(opener)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map(|_| opener)
        .map_err(|e| format!("{opener}: {e}"))
}

/// Log lines go back to stderr; says where the ones written while the UI was up are.
fn logged_while_drawing() {
    let lines = crate::logs::restore();
    if lines > 0 {
        eprintln!(
            "{lines} log line{} while the UI was on screen: {}",
            if lines == 1 { "" } else { "s" },
            crate::logs::file_path().display()
        );
    }
}

/// `selfagent run` (with the UI): asks for the task if none was given, then runs it.
/// Returns the exit code `run --headless` gives the same end (0 when no task was started).
pub async fn live(setup: LiveSetup) -> anyhow::Result<u8> {
    let db_path = setup.cfg.db.clone();
    let task = setup.instruction.clone();
    let screen = if task.is_some() {
        Screen::Live
    } else {
        Screen::Ask
    };
    // ratatui::init restores the terminal on panic too.
    crate::logs::divert_to_file();
    let mut terminal = init_terminal();
    let mut runner = Runner::new(App::new(screen), None, db_path.clone());
    runner.app.log_path = crate::logs::file_path().display().to_string();
    runner.setup = Some(setup);
    if let Some(task) = task {
        runner.start_live(task);
    }
    let result = runner.run(&mut terminal, true).await;
    restore_terminal();
    logged_while_drawing();
    result?;
    if let Some(status) = runner.app.status {
        let session = &runner.app.header.session;
        eprintln!(
            "session {session} {status}; recorded in {}",
            db_path.display()
        );
    }
    // The whole URL, which the status bar could only abbreviate, while it still works.
    if let Some(url) = &runner.app.view_url
        && runner.keep_desktop
    {
        eprintln!("live view (the desktop is still running): {url}");
    }
    // Quit before the episode said how it ended: stopped, as Ctrl-C is headless.
    Ok(runner.exit.unwrap_or(if runner.live.is_some() {
        episode::EXIT_STOPPED
    } else {
        0
    }))
}

/// `selfagent replay [SESSION]`: a recorded episode, or the sessions list.
pub async fn replay(db_path: &Path, session: Option<&str>, timing: bool) -> anyhow::Result<()> {
    // Fail before touching the terminal if the recording or session is not there.
    let db = Db::open_read(db_path)?;
    if let Some(id) = session {
        db.session(id)?;
    }
    drop(db);
    {
        use std::io::IsTerminal;
        if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
            anyhow::bail!(
                "replay draws in a terminal, and stdin or stdout is not one; without one: \
                 `selfagent sessions show SESSION`, or `selfagent export --html SESSION`"
            );
        }
    }
    let opened = Instant::now();
    crate::logs::divert_to_file();
    let mut terminal = init_terminal();
    let mut runner = Runner::new(App::new(Screen::Browser), None, db_path.to_owned());
    runner.app.log_path = crate::logs::file_path().display().to_string();
    runner.opened = opened;
    let loaded = match session {
        Some(id) => runner.load_replay(id),
        None => runner.load_browser(),
    };
    let result = match loaded {
        Ok(()) => runner.run(&mut terminal, true).await,
        Err(e) => Err(e),
    };
    restore_terminal();
    logged_while_drawing();
    result.context("replay")?;
    if timing {
        eprintln!(
            "first paint {:.1} ms, first screenshot {}",
            runner.first_paint.map_or(0.0, |d| d.as_secs_f64() * 1000.0),
            runner.first_image.map_or_else(
                || "not shown".to_owned(),
                |d| format!("{:.1} ms", d.as_secs_f64() * 1000.0)
            )
        );
    }
    Ok(())
}

/// Loads a recorded session into the replay screen and draws it on a test terminal with
/// halfblocks, as `replay` does; returns (loaded and drawn, screenshot drawn). For `bench`.
pub async fn measure_replay(
    db_path: &Path,
    session: &str,
    cols: u16,
    rows: u16,
) -> anyhow::Result<(Duration, Duration)> {
    let started = Instant::now();
    let mut terminal = ratatui::Terminal::new(ratatui::backend::TestBackend::new(cols, rows))?;
    let mut runner = Runner::new(
        App::new(Screen::Replay),
        Some(ratatui_image::picker::Picker::halfblocks()),
        db_path.to_owned(),
    );
    runner.load_replay(session)?;
    let size = ratatui::layout::Rect::new(0, 0, cols, rows);
    runner.request_image(size);
    terminal.draw(|f| view::draw(f, &runner.app, &runner.shots))?;
    let first_paint = started.elapsed();
    let encoded = tokio::time::timeout(Duration::from_secs(10), runner.encoded_rx.recv())
        .await
        .context("the first screenshot was not encoded within 10 s")?
        .context("encoder gone")?;
    runner.shots.finished(encoded);
    if let Some(e) = &runner.shots.error {
        anyhow::bail!("encoding the first screenshot: {e}");
    }
    terminal.draw(|f| view::draw(f, &runner.app, &runner.shots))?;
    Ok((first_paint, started.elapsed()))
}
