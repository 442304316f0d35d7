//! Every key of the TUI, bound and described once, as gitui keeps its command list: the
//! footer's hints, the help overlay and [`App::on_key`](super::app::App::on_key) all read
//! this table, so a key cannot work without being described or be described without working.
//!
//! Modal prompts (typing a message or a task, "stop and quit?", "approve this action?",
//! "delete this session?") take their own keys, which they name in the prompt itself.

use crossterm::event::KeyCode;

/// What a key does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmd {
    // The running agent.
    Pause,
    Step,
    Approve,
    Message,
    TakeOver,
    Stop,
    // Moving through steps or sessions.
    Up,
    Down,
    PageUp,
    PageDown,
    First,
    Last,
    Prev,
    Next,
    // Looking.
    Full,
    BeforeAfter,
    Play,
    Faster,
    Slower,
    /// `1`, `2`, `4`, `8`: play at that speed.
    Speed,
    // Sharing.
    CopyView,
    CopyWatch,
    CopyId,
    OpenView,
    // The sessions list.
    Open,
    Filter,
    ClearFilter,
    Sort,
    Delete,
    // Everywhere.
    Sessions,
    Help,
    Quit,
    /// The Ask screen: start the typed task.
    Start,
}

/// Which key set applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// Asking for a task (typing; Enter starts, Esc quits).
    Ask,
    /// An agent starting, running, paused or stopping.
    Running,
    /// The episode is over; its steps are still there to look at.
    Finished,
    Replay,
    Browser,
}

/// The footer's short form of a binding.
#[derive(Debug, Clone, Copy)]
pub struct Hint {
    pub keys: &'static str,
    pub label: &'static str,
    /// The label while the command's state is on (`pause` becomes `resume`).
    pub toggled: Option<&'static str>,
}

/// One key binding: the keys, what they do, and how the footer and the help name them.
#[derive(Debug, Clone, Copy)]
pub struct Binding {
    pub cmd: Cmd,
    pub keys: &'static [KeyCode],
    /// The help overlay's line for this binding and the ones after it without their own
    /// (`↑ ↓, j k`: earlier steps…): keys as shown, and what they do.
    pub help: Option<(&'static str, &'static str)>,
    pub hint: Option<Hint>,
}

const fn bind(cmd: Cmd, keys: &'static [KeyCode]) -> Binding {
    Binding {
        cmd,
        keys,
        help: None,
        hint: None,
    }
}

impl Binding {
    const fn help(mut self, keys: &'static str, what: &'static str) -> Self {
        self.help = Some((keys, what));
        self
    }

    const fn hint(mut self, keys: &'static str, label: &'static str) -> Self {
        self.hint = Some(Hint {
            keys,
            label,
            toggled: None,
        });
        self
    }

    const fn toggles(mut self, label: &'static str) -> Self {
        if let Some(h) = self.hint.as_mut() {
            h.toggled = Some(label);
        }
        self
    }
}

use KeyCode::{Char, Delete, Down, End, Enter, Esc, Home, Left, PageDown, PageUp, Right, Tab, Up};

const RUNNING: &[Binding] = &[
    bind(Cmd::Pause, &[Char('p'), Char(' ')])
        .help(
            "p, space",
            "pause; again to resume (the current step finishes first)",
        )
        .hint("p", "pause")
        .toggles("resume"),
    bind(Cmd::Step, &[Char('s')])
        .help("s", "run one step, then pause")
        .hint("s", "step"),
    bind(Cmd::Approve, &[Char('a')])
        .help("a", "approve each action: y/n before it runs")
        .hint("a", "approve"),
    bind(Cmd::Message, &[Char('m')])
        .help("m", "send a message to the agent")
        .hint("m", "message"),
    bind(Cmd::TakeOver, &[Char('t')])
        .help(
            "t",
            "take over: pause and use the desktop in the view; t hands back",
        )
        .hint("t", "take over"),
    bind(Cmd::Stop, &[Char('x')])
        .help(
            "x, ctrl-c",
            "stop the agent (the session is recorded as stopped)",
        )
        .hint("x", "stop"),
    bind(Cmd::Up, &[Up, Char('k')]).help(
        "↑ ↓, j k",
        "earlier steps; PgUp PgDn by ten; End follows the latest",
    ),
    bind(Cmd::Down, &[Down, Char('j')]),
    bind(Cmd::PageUp, &[PageUp]),
    bind(Cmd::PageDown, &[PageDown]),
    bind(Cmd::First, &[Home]),
    bind(Cmd::Last, &[End, Char('G')]),
    bind(Cmd::Full, &[Char('f')])
        .help("f, esc", "full-screen screenshot; esc leaves it")
        .hint("f", "full"),
    bind(Cmd::CopyView, &[Char('y')]).help(
        "y, w, Y",
        "copy the view URL / the view-only URL / the session id",
    ),
    bind(Cmd::CopyWatch, &[Char('w')]),
    bind(Cmd::CopyId, &[Char('Y')]),
    bind(Cmd::OpenView, &[Char('o')]).help("o", "open the live view in a browser"),
    bind(Cmd::Sessions, &[Char('l')]).help("l", "the sessions list (after the run)"),
    bind(Cmd::Help, &[Char('?')]).hint("?", "help"),
    bind(Cmd::Quit, &[Char('q')])
        .help("q", "quit (asks first while the agent runs, then stops it)")
        .hint("q", "quit"),
];

const FINISHED: &[Binding] = &[
    bind(Cmd::Up, &[Up, Char('k')])
        .help("↑ ↓, j k", "look at the steps; PgUp PgDn by ten, Home End")
        .hint("↑↓", "steps"),
    bind(Cmd::Down, &[Down, Char('j')]),
    bind(Cmd::PageUp, &[PageUp]),
    bind(Cmd::PageDown, &[PageDown]),
    bind(Cmd::First, &[Home]),
    bind(Cmd::Last, &[End, Char('G')]),
    bind(Cmd::CopyView, &[Char('y')])
        .help(
            "y, Y",
            "copy the view URL (while the desktop lives) / the session id",
        )
        .hint("y", "copy id"),
    bind(Cmd::CopyWatch, &[Char('w')]),
    bind(Cmd::CopyId, &[Char('Y')]),
    bind(Cmd::Full, &[Char('f')])
        .help("f, esc", "full-screen screenshot; esc leaves it")
        .hint("f", "full"),
    bind(Cmd::OpenView, &[Char('o')]).help(
        "o",
        "open the live view in a browser (while the desktop lives)",
    ),
    bind(Cmd::Sessions, &[Char('l')])
        .help("l", "the sessions list")
        .hint("l", "sessions"),
    bind(Cmd::Help, &[Char('?')]).hint("?", "help"),
    bind(Cmd::Quit, &[Char('q')])
        .help("q", "quit")
        .hint("q", "quit"),
];

const REPLAY: &[Binding] = &[
    bind(Cmd::Prev, &[Left, Char('H')])
        .help("← →, ↑ ↓", "previous / next step; PgUp PgDn by ten")
        .hint("←→", "step"),
    bind(Cmd::Next, &[Right, Char('L')]),
    bind(Cmd::Up, &[Up, Char('k')]),
    bind(Cmd::Down, &[Down, Char('j')]),
    bind(Cmd::PageUp, &[PageUp]),
    bind(Cmd::PageDown, &[PageDown]),
    bind(Cmd::First, &[Home, Char('g')])
        .help("g, G, Home, End", "first / last step")
        .hint("g/G", "start/end"),
    bind(Cmd::Last, &[End, Char('G')]),
    bind(Cmd::Play, &[Char(' ')])
        .help("space", "play / pause (from the start when at the end)")
        .hint("space", "play")
        .toggles("pause"),
    bind(Cmd::Faster, &[Char('+'), Char('=')])
        .help(
            "+ -, 1 2 4 8",
            "speed: faster / slower, or play at 1x to 8x",
        )
        .hint("+/-", "speed"),
    bind(Cmd::Slower, &[Char('-')]),
    bind(Cmd::Speed, &[Char('1'), Char('2'), Char('4'), Char('8')]),
    bind(Cmd::CopyId, &[Char('y'), Char('Y')]).help("Y", "copy the session id (OSC 52)"),
    bind(Cmd::OpenView, &[Char('o')]),
    bind(Cmd::BeforeAfter, &[Tab, Char('b')])
        .help("b, tab", "the screen before / after the step")
        .hint("b", "before/after"),
    bind(Cmd::Full, &[Char('f')])
        .help("f", "full-screen screenshot (esc leaves it)")
        .hint("f", "full"),
    bind(Cmd::Sessions, &[Char('l'), Esc])
        .help("l, esc", "back to the sessions list")
        .hint("l", "sessions"),
    bind(Cmd::Help, &[Char('?')]),
    bind(Cmd::Quit, &[Char('q')])
        .help("q", "quit")
        .hint("q", "quit"),
];

const BROWSER: &[Binding] = &[
    bind(Cmd::Up, &[Up, Char('k')])
        .help(
            "↑ ↓, j k",
            "select a session; PgUp PgDn by ten, g G first / last",
        )
        .hint("↑↓", "select"),
    bind(Cmd::Down, &[Down, Char('j')]),
    bind(Cmd::PageUp, &[PageUp]),
    bind(Cmd::PageDown, &[PageDown]),
    bind(Cmd::First, &[Home, Char('g')]),
    bind(Cmd::Last, &[End, Char('G')]),
    bind(Cmd::Open, &[Enter])
        .help("enter", "replay it")
        .hint("enter", "replay"),
    bind(Cmd::Filter, &[Char('/')])
        .help(
            "/",
            "filter by id, status, task, model or error (enter keeps, esc clears)",
        )
        .hint("/", "filter"),
    // The top level: Esc has nowhere to go back to (as in lazygit and k9s); it clears a
    // filter.
    bind(Cmd::ClearFilter, &[Esc]),
    bind(Cmd::Sort, &[Char('s')])
        .help("s", "sort: newest, status, task, longest")
        .hint("s", "sort"),
    bind(Cmd::Delete, &[Char('d'), Delete])
        .help(
            "d, del",
            "delete it (asks; screenshots other sessions show are kept)",
        )
        .hint("d", "delete"),
    bind(Cmd::Help, &[Char('?')]).hint("?", "help"),
    bind(Cmd::Quit, &[Char('q')])
        .help("q", "quit")
        .hint("q", "quit"),
];

const ASK: &[Binding] = &[
    bind(Cmd::Start, &[Enter]).hint("enter", "start"),
    bind(Cmd::Quit, &[Esc]).hint("esc", "quit"),
];

/// The bindings of a view, in the order the footer and the help show them.
pub fn bindings(view: View) -> &'static [Binding] {
    match view {
        View::Ask => ASK,
        View::Running => RUNNING,
        View::Finished => FINISHED,
        View::Replay => REPLAY,
        View::Browser => BROWSER,
    }
}

/// The command a key gives in a view.
pub fn command(view: View, key: KeyCode) -> Option<Cmd> {
    bindings(view)
        .iter()
        .find(|b| b.keys.contains(&key))
        .map(|b| b.cmd)
}

/// The help overlay's lines for a view (the Ask screen shows what the run will take).
pub fn help(view: View) -> Vec<(&'static str, &'static str)> {
    let view = if view == View::Ask {
        View::Running
    } else {
        view
    };
    bindings(view).iter().filter_map(|b| b.help).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const VIEWS: [View; 5] = [
        View::Ask,
        View::Running,
        View::Finished,
        View::Replay,
        View::Browser,
    ];

    #[test]
    fn no_key_is_bound_twice_in_a_view() {
        for view in VIEWS {
            let mut seen = Vec::new();
            for b in bindings(view) {
                for k in b.keys {
                    assert!(!seen.contains(k), "{view:?}: {k:?} is bound twice");
                    seen.push(*k);
                }
            }
        }
    }

    #[test]
    fn every_view_says_how_to_quit_and_every_hint_names_a_bound_key() {
        for view in VIEWS {
            let all = bindings(view);
            assert!(all.iter().any(|b| b.cmd == Cmd::Quit && b.hint.is_some()));
            for b in all {
                assert!(!b.keys.is_empty(), "{view:?}: {:?} has no key", b.cmd);
            }
        }
        assert_eq!(command(View::Replay, KeyCode::Esc), Some(Cmd::Sessions));
        assert_eq!(command(View::Browser, KeyCode::Char('x')), None);
        assert_eq!(help(View::Ask), help(View::Running));
    }
}
