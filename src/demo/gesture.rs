//! A person's raw input (RFB key and pointer events) turned into the actions a model would
//! have taken: clicks, double and triple clicks, drags, scrolls, key combinations, and typed
//! text coalesced into one `type`.
//!
//! Pure and clock-free (the caller passes `now`), so it is tested without a desktop. Every
//! gesture begins at its first input: the caller takes the step's before-screenshot when it
//! sees [`Out::Begin`], before forwarding that input, so the frame shows the screen the
//! person acted on. A gesture ends ([`Out::Done`]) when the next one begins, or after a pause
//! ([`Timing`]) that leaves room for a second click or more typing.

use crate::action::{Action, Button, Point};
use crate::keys;
use std::time::{Duration, Instant};

/// One input message from the person's VNC client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    Pointer { x: u16, y: u16, buttons: u8 },
    Key { keysym: u32, down: bool },
}

/// What the caller does.
#[derive(Debug, Clone, PartialEq)]
pub enum Out {
    /// A step may start with the input being handled: take its before-screenshot now. A
    /// later `Begin` without a `Done` between replaces it (modifiers pressed and let go
    /// around nothing).
    Begin,
    /// The open step's action is complete.
    Done(Action),
}

/// The pauses that end a gesture.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// A second press of the same button within this (and `slop` pixels) makes a double
    /// click; a third a triple. X toolkits default to 400 ms.
    pub multi_click: Duration,
    /// Typing pauses longer than this end a `type` step.
    pub type_idle: Duration,
    /// Wheel notches further apart than this are separate scrolls.
    pub scroll_idle: Duration,
    /// The same key combination pressed again within this joins the step (`Down Down Down`).
    pub key_idle: Duration,
    /// Pixels a pointer may move between press and release and still click.
    pub slop: i32,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            multi_click: Duration::from_millis(400),
            type_idle: Duration::from_millis(1000),
            scroll_idle: Duration::from_millis(400),
            key_idle: Duration::from_millis(500),
            slop: 4,
        }
    }
}

/// RFB's button mask bits: 1 left, 2 middle, 4 right; 8/16 the wheel up/down, 32/64 left/right.
const CLICK_BUTTONS: [(u8, Button); 3] =
    [(1, Button::Left), (2, Button::Middle), (4, Button::Right)];
const WHEEL: [(u8, i32, i32); 4] = [(8, 0, -1), (16, 0, 1), (32, -1, 0), (64, 1, 0)];
/// Drag paths keep a point every this many pixels, at most `MAX_PATH` points.
const PATH_STEP: i32 = 24;
const MAX_PATH: usize = 64;

#[derive(Debug, Clone)]
enum Open {
    /// Only modifiers are down so far (shift before a capital, ctrl before a click).
    Mods,
    Press {
        button: Button,
        bit: u8,
        count: u8,
        path: Vec<Point>,
        moved: bool,
        modifiers: Vec<String>,
    },
    /// Released; a further press of the same button may make it a double or triple click.
    Clicked {
        button: Button,
        bit: u8,
        at: Point,
        count: u8,
        modifiers: Vec<String>,
        since: Instant,
    },
    Typing {
        text: String,
        last: Instant,
    },
    Keys {
        combo: String,
        times: u32,
        last: Instant,
    },
    Scroll {
        at: Point,
        dx: i32,
        dy: i32,
        modifiers: Vec<String>,
        last: Instant,
    },
}

/// The recognizer: feed it every input in order, and call [`Recognizer::tick`] now and then.
#[derive(Debug)]
pub struct Recognizer {
    timing: Timing,
    pointer: Point,
    buttons: u8,
    /// Modifier keysyms held, in the order they went down.
    held: Vec<u32>,
    open: Option<Open>,
    /// A modifier-only step saw another input (so releasing the modifiers is not a key).
    mods_used: bool,
}

impl Recognizer {
    pub fn new(timing: Timing) -> Self {
        Self {
            timing,
            pointer: Point::new(0, 0),
            buttons: 0,
            held: Vec::new(),
            open: None,
            mods_used: false,
        }
    }

    /// Whether a step is open (begun and not yet done).
    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// Modifier names held, in combo order.
    fn modifiers(&self, without_shift: bool) -> Vec<String> {
        let mut names: Vec<&str> = self
            .held
            .iter()
            .filter_map(|k| keys::modifier_name(*k))
            .filter(|n| !(without_shift && *n == "shift"))
            .collect();
        let order = |n: &&str| {
            ["ctrl", "alt", "shift", "super"]
                .iter()
                .position(|m| m == n)
        };
        names.sort_by_key(order);
        names.dedup();
        names.into_iter().map(str::to_owned).collect()
    }

    /// Ends the open step (if any) with its action.
    fn close(&mut self) -> Option<Out> {
        let action = match self.open.take()? {
            Open::Mods => {
                let mods = self.modifiers(false);
                if self.mods_used || mods.is_empty() {
                    // Modifiers that went with a gesture, or a stray release: no step of its
                    // own (the caller drops a begun step that never got an action).
                    return None;
                }
                Action::Key {
                    text: mods.join("+"),
                }
            }
            Open::Press {
                button,
                count,
                path,
                moved,
                modifiers,
                ..
            } => press_action(button, count, path, moved, modifiers, self.pointer),
            Open::Clicked {
                button,
                at,
                count,
                modifiers,
                ..
            } => Action::Click {
                coordinate: Some(at),
                button,
                count,
                modifiers,
            },
            Open::Typing { text, .. } => Action::Type { text },
            Open::Keys { combo, times, .. } => Action::Key {
                text: vec![combo; times as usize].join(" "),
            },
            Open::Scroll {
                at,
                dx,
                dy,
                modifiers,
                ..
            } => Action::Scroll {
                coordinate: Some(at),
                dx,
                dy,
                modifiers,
            },
        };
        Some(Out::Done(action))
    }

    /// Closes the open step (unless it is the modifiers-only one the new gesture continues)
    /// and begins a new one.
    fn begin(&mut self, out: &mut Vec<Out>, continue_mods: bool) {
        if continue_mods && matches!(self.open, Some(Open::Mods)) {
            self.open = None;
            self.mods_used = true;
            return;
        }
        out.extend(self.close());
        out.push(Out::Begin);
    }

    /// Handles one input; the returned outs come before the input is forwarded.
    pub fn input(&mut self, input: Input, now: Instant) -> Vec<Out> {
        let mut out = Vec::new();
        match input {
            Input::Pointer { x, y, buttons } => self.pointer_input(x, y, buttons, now, &mut out),
            Input::Key { keysym, down } => self.key_input(keysym, down, now, &mut out),
        }
        out
    }

    fn pointer_input(&mut self, x: u16, y: u16, buttons: u8, now: Instant, out: &mut Vec<Out>) {
        let at = Point::new(i32::from(x), i32::from(y));
        let pressed = buttons & !self.buttons;
        let released = self.buttons & !buttons;
        self.pointer = at;
        self.buttons = buttons;
        let slop = self.timing.slop;
        let near = |a: Point, b: Point| (a.x - b.x).abs() <= slop && (a.y - b.y).abs() <= slop;

        // Movement first: it belongs to what is open.
        match &mut self.open {
            Some(Open::Press { path, moved, .. }) => {
                let first = path[0];
                if !near(first, at) {
                    *moved = true;
                }
                let last = *path.last().unwrap_or(&first);
                if *moved
                    && path.len() < MAX_PATH
                    && ((last.x - at.x).abs() >= PATH_STEP || (last.y - at.y).abs() >= PATH_STEP)
                {
                    path.push(at);
                }
            }
            Some(Open::Clicked { at: where_, .. }) if !near(*where_, at) => {
                // Moved away: no double click will follow.
                out.extend(self.close());
            }
            _ => {}
        }

        for (bit, dx, dy) in WHEEL {
            if pressed & bit == 0 {
                continue;
            }
            let modifiers = self.modifiers(false);
            match &mut self.open {
                Some(Open::Scroll {
                    at: where_,
                    dx: sx,
                    dy: sy,
                    modifiers: m,
                    last,
                }) if near(*where_, at)
                    && *m == modifiers
                    && (sx.signum() == dx.signum() || dx == 0)
                    && (sy.signum() == dy.signum() || dy == 0) =>
                {
                    *sx += dx;
                    *sy += dy;
                    *last = now;
                }
                _ => {
                    self.begin(out, true);
                    self.open = Some(Open::Scroll {
                        at,
                        dx,
                        dy,
                        modifiers,
                        last: now,
                    });
                }
            }
        }

        for (bit, button) in CLICK_BUTTONS {
            if pressed & bit != 0 {
                let modifiers = self.modifiers(false);
                let again = match &self.open {
                    Some(Open::Clicked {
                        bit: b,
                        at: where_,
                        count,
                        since,
                        ..
                    }) if *b == bit
                        && near(*where_, at)
                        && *count < 3
                        && now.duration_since(*since) <= self.timing.multi_click =>
                    {
                        Some(*count + 1)
                    }
                    _ => None,
                };
                let count = match again {
                    Some(count) => count,
                    None if matches!(self.open, Some(Open::Press { .. })) => {
                        // Another button while one is down: part of that gesture.
                        continue;
                    }
                    None => {
                        self.begin(out, true);
                        1
                    }
                };
                self.open = Some(Open::Press {
                    button,
                    bit,
                    count,
                    path: vec![at],
                    moved: false,
                    modifiers,
                });
            }
            if released & bit != 0 {
                let Some(Open::Press {
                    bit: b,
                    button,
                    count,
                    moved,
                    modifiers,
                    ..
                }) = &self.open
                else {
                    continue;
                };
                if *b != bit {
                    continue;
                }
                if *moved || *count >= 3 {
                    out.extend(self.close());
                } else {
                    let (button, count, modifiers) = (*button, *count, modifiers.clone());
                    let first = match &self.open {
                        Some(Open::Press { path, .. }) => path[0],
                        _ => at,
                    };
                    self.open = Some(Open::Clicked {
                        button,
                        bit,
                        at: first,
                        count,
                        modifiers,
                        since: now,
                    });
                }
            }
        }
    }

    fn key_input(&mut self, keysym: u32, down: bool, now: Instant, out: &mut Vec<Out>) {
        if keys::modifier_name(keysym).is_some() {
            if down {
                if !self.held.contains(&keysym) {
                    self.held.push(keysym);
                }
                if self.open.is_none()
                    || matches!(
                        self.open,
                        Some(Open::Clicked { .. } | Open::Keys { .. } | Open::Scroll { .. })
                    )
                {
                    out.extend(self.close());
                    out.push(Out::Begin);
                    self.open = Some(Open::Mods);
                    self.mods_used = false;
                }
            } else {
                if matches!(self.open, Some(Open::Mods))
                    && self.held.len() == 1
                    && self.held.contains(&keysym)
                {
                    // The last modifier of a modifier-only step went up: that was the key.
                    out.extend(self.close());
                }
                self.held.retain(|k| *k != keysym);
            }
            return;
        }
        if !down {
            return;
        }
        let combo_mods = self.modifiers(true);
        if let Some(c) = keys::keysym_char(keysym)
            && combo_mods.is_empty()
        {
            if let Some(Open::Typing { text, last }) = &mut self.open
                && now.duration_since(*last) <= self.timing.type_idle
                // A `type` action holds at most this much; a longer run starts another.
                && text.chars().count() < crate::action::MAX_TYPE_CHARS
            {
                text.push(c);
                *last = now;
                return;
            }
            self.begin(out, true);
            self.open = Some(Open::Typing {
                text: c.to_string(),
                last: now,
            });
            return;
        }
        let mut parts =
            self.modifiers(keys::keysym_char(keysym).is_some() && combo_mods.is_empty());
        let name = match keys::keysym_char(keysym) {
            // ctrl+shift+T arrives as capital T with shift held: name the key, not the case.
            Some(c) if c.is_alphabetic() && !combo_mods.is_empty() => {
                c.to_lowercase().collect::<String>()
            }
            _ => keys::keysym_name(keysym),
        };
        parts.push(name);
        let combo = parts.join("+");
        if let Some(Open::Keys {
            combo: c,
            times,
            last,
        }) = &mut self.open
            && *c == combo
            && now.duration_since(*last) <= self.timing.key_idle
        {
            *times += 1;
            *last = now;
            return;
        }
        self.begin(out, true);
        self.open = Some(Open::Keys {
            combo,
            times: 1,
            last: now,
        });
    }

    /// Ends a step whose pause has run out.
    pub fn tick(&mut self, now: Instant) -> Vec<Out> {
        let t = &self.timing;
        let due = match &self.open {
            Some(Open::Clicked { since, .. }) => now.duration_since(*since) > t.multi_click,
            Some(Open::Typing { last, .. }) => now.duration_since(*last) > t.type_idle,
            Some(Open::Keys { last, .. }) => now.duration_since(*last) > t.key_idle,
            Some(Open::Scroll { last, .. }) => now.duration_since(*last) > t.scroll_idle,
            _ => false,
        };
        if due {
            self.close().into_iter().collect()
        } else {
            Vec::new()
        }
    }

    /// Ends whatever is open (the demonstration is over); a button still down counts as
    /// released where the pointer is.
    pub fn flush(&mut self) -> Vec<Out> {
        self.close().into_iter().collect()
    }
}

fn press_action(
    button: Button,
    count: u8,
    mut path: Vec<Point>,
    moved: bool,
    modifiers: Vec<String>,
    pointer: Point,
) -> Action {
    if moved {
        if path.last() != Some(&pointer) {
            path.push(pointer);
        }
        return Action::Drag { path, button };
    }
    Action::Click {
        coordinate: path.first().copied(),
        button,
        count,
        modifiers,
    }
}

#[cfg(test)]
#[path = "gesture_tests.rs"]
mod tests;
