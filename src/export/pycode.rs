//! Actions as pyautogui code, the lingua franca of computer-use training data: OSWorld's
//! `traj.jsonl` (absolute pixels) and OpenCUA's AgentNet (coordinates as 0–1 fractions of
//! the screen). The code written here reads back as the same actions through the pyautogui
//! protocol's own parser (a unit test holds that).

use crate::action::{Action, Button, Point};

/// How points are written.
#[derive(Debug, Clone, Copy)]
pub enum Coords {
    /// Screen pixels (OSWorld's pyautogui action space).
    Pixels,
    /// Fractions of the screen, four decimals (AgentNet).
    Unit { width: u32, height: u32 },
}

impl Coords {
    fn xy(&self, p: Point) -> String {
        match *self {
            Self::Pixels => format!("x={}, y={}", p.x, p.y),
            Self::Unit { width, height } => {
                format!("x={}, y={}", unit(p.x, width), unit(p.y, height))
            }
        }
    }
}

fn unit(v: i32, size: u32) -> String {
    let f = (v as f64 / size.max(1) as f64 * 10_000.0).round() / 10_000.0;
    format!("{f}")
}

/// A Python string literal.
pub fn py_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// An xdotool key name as pyautogui spells it.
fn key(k: &str) -> String {
    let lower = k.to_ascii_lowercase();
    match lower.as_str() {
        "return" | "kp_enter" => "enter".into(),
        "escape" => "esc".into(),
        "backspace" => "backspace".into(),
        "page_up" | "prior" => "pageup".into(),
        "page_down" | "next" => "pagedown".into(),
        "super" | "super_l" | "meta" | "cmd" => "win".into(),
        "control" | "control_l" | "ctrl_l" => "ctrl".into(),
        "alt_l" => "alt".into(),
        "shift_l" => "shift".into(),
        "caps_lock" => "capslock".into(),
        "print" => "printscreen".into(),
        "plus" => "+".into(),
        "minus" => "-".into(),
        _ if k.chars().count() == 1 => k.to_owned(),
        other => other.replace('_', ""),
    }
}

fn button(b: Button) -> &'static str {
    match b {
        Button::Left => "left",
        Button::Right => "right",
        Button::Middle => "middle",
        Button::Back => "back",
        Button::Forward => "forward",
    }
}

/// `ctrl+a Delete` as pyautogui lines: `hotkey` for a combination, `press` for one key.
fn keys(text: &str) -> Vec<String> {
    text.split_whitespace()
        .map(|combo| {
            let parts: Vec<String> = combo
                .split('+')
                .filter(|k| !k.is_empty())
                .map(|k| py_str(&key(k)))
                .collect();
            match parts.len() {
                0 => format!("pyautogui.press({})", py_str("+")),
                1 => format!("pyautogui.press({})", parts[0]),
                _ => format!("pyautogui.hotkey({})", parts.join(", ")),
            }
        })
        .collect()
}

/// `inner` with `keys` held down around it: pressed in order, released in reverse.
fn held(keys: &[impl AsRef<str>], inner: Vec<String>) -> Vec<String> {
    let down = keys
        .iter()
        .map(|k| format!("pyautogui.keyDown({})", py_str(&key(k.as_ref()))));
    let up = keys
        .iter()
        .rev()
        .map(|k| format!("pyautogui.keyUp({})", py_str(&key(k.as_ref()))));
    down.chain(inner).chain(up).collect()
}

/// The action as pyautogui code (lines joined by `\n`); `None` for what pyautogui cannot
/// say (launching an app, a screenshot, the episode's end: see [`end_code`]).
pub fn code(a: &Action, c: Coords) -> Option<String> {
    let lines: Vec<String> = match a {
        Action::MouseMove { coordinate } => {
            vec![format!("pyautogui.moveTo({})", c.xy(*coordinate))]
        }
        Action::Click {
            coordinate,
            button: b,
            count,
            modifiers,
        } => {
            let at = coordinate.map(|p| c.xy(p)).unwrap_or_default();
            let call = match (b, count) {
                (Button::Left, 2) => format!("pyautogui.doubleClick({at})"),
                (Button::Left, 3) => format!("pyautogui.tripleClick({at})"),
                (Button::Left, 1) => format!("pyautogui.click({at})"),
                (Button::Right, 1) => format!("pyautogui.rightClick({at})"),
                (Button::Middle, 1) => format!("pyautogui.middleClick({at})"),
                (b, n) => {
                    let sep = if at.is_empty() { "" } else { ", " };
                    format!(
                        "pyautogui.click({at}{sep}clicks={n}, button={})",
                        py_str(button(*b))
                    )
                }
            };
            held(modifiers, vec![call])
        }
        Action::MouseDown {
            coordinate,
            button: b,
        }
        | Action::MouseUp {
            coordinate,
            button: b,
        } => {
            let name = if matches!(a, Action::MouseDown { .. }) {
                "mouseDown"
            } else {
                "mouseUp"
            };
            match coordinate {
                Some(p) => vec![format!(
                    "pyautogui.{name}({}, button={})",
                    c.xy(*p),
                    py_str(button(*b))
                )],
                None => vec![format!("pyautogui.{name}(button={})", py_str(button(*b)))],
            }
        }
        Action::Drag { path, button: b } => {
            let (first, last) = (path.first()?, path.last()?);
            let mut out = Vec::new();
            if path.len() > 1 {
                out.push(format!("pyautogui.moveTo({})", c.xy(*first)));
            }
            out.push(format!(
                "pyautogui.dragTo({}, button={})",
                c.xy(*last),
                py_str(button(*b))
            ));
            out
        }
        Action::Scroll {
            coordinate,
            dx,
            dy,
            modifiers,
        } => {
            let mut out = Vec::new();
            if let Some(p) = coordinate {
                out.push(format!("pyautogui.moveTo({})", c.xy(*p)));
            }
            // pyautogui scrolls up for positive clicks; ours go down for positive dy.
            if *dy != 0 {
                out.push(format!("pyautogui.scroll({})", -dy));
            }
            if *dx != 0 {
                out.push(format!("pyautogui.hscroll({dx})"));
            }
            held(modifiers, out)
        }
        Action::Type { text } => vec![format!("pyautogui.write(message={})", py_str(text))],
        Action::Key { text } => keys(text),
        Action::KeyDown { text } => text
            .split('+')
            .map(|k| format!("pyautogui.keyDown({})", py_str(&key(k))))
            .collect(),
        Action::KeyUp { text } => text
            .split('+')
            .map(|k| format!("pyautogui.keyUp({})", py_str(&key(k))))
            .collect(),
        Action::HoldKey { text, duration } => {
            let keys: Vec<&str> = text.split('+').collect();
            held(&keys, vec![format!("time.sleep({duration})")])
        }
        _ => return None,
    };
    Some(lines.join("\n"))
}

/// An ending action as OpenCUA's `computer` calls: `computer.terminate(status='success')`,
/// `computer.wait()`; `None` for others.
pub fn computer_code(a: &Action) -> Option<String> {
    Some(match a {
        Action::Done { .. } => "computer.terminate(status='success')".into(),
        Action::Fail { .. } => "computer.terminate(status='failure')".into(),
        Action::Wait { .. } => "computer.wait()".into(),
        _ => return None,
    })
}

/// OSWorld's special codes for an ending action: `DONE`, `FAIL`, `WAIT`.
pub fn osworld_special(a: &Action) -> Option<&'static str> {
    Some(match a {
        Action::Done { .. } => "DONE",
        Action::Fail { .. } | Action::CallUser { .. } => "FAIL",
        Action::Wait { .. } => "WAIT",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::protocol::{CoordSpace, Geometry};

    fn p(x: i32, y: i32) -> Point {
        Point { x, y }
    }

    /// The code reads back as the same action through the pyautogui protocol's parser.
    #[test]
    fn the_code_written_reads_back_as_the_action() {
        let g = Geometry::pixels((1280, 800), (1280, 800), CoordSpace::Native);
        let cases = [
            Action::Click {
                coordinate: Some(p(10, 20)),
                button: Button::Left,
                count: 1,
                modifiers: vec![],
            },
            Action::Click {
                coordinate: Some(p(10, 20)),
                button: Button::Right,
                count: 1,
                modifiers: vec![],
            },
            Action::Click {
                coordinate: Some(p(10, 20)),
                button: Button::Left,
                count: 2,
                modifiers: vec![],
            },
            Action::MouseMove {
                coordinate: p(1100, 700),
            },
            Action::Type {
                text: "it's a \"test\"\\ \n".into(),
            },
            Action::Key {
                text: "ctrl+shift+t".into(),
            },
            Action::Key {
                text: "Return".into(),
            },
        ];
        for a in cases {
            let code = code(&a, Coords::Pixels).unwrap();
            let back = crate::model::protocol::pyautogui::parse_one(&code, &g)
                .unwrap_or_else(|e| panic!("{code}: {e}"));
            let norm = |a: &Action| match a {
                Action::Key { text } => Action::Key {
                    text: text.to_ascii_lowercase().replace("return", "enter"),
                },
                other => other.clone(),
            };
            assert_eq!(norm(&back), norm(&a), "{code}");
        }
    }

    #[test]
    fn agentnet_writes_fractions_and_drags_as_move_then_drag() {
        let c = Coords::Unit {
            width: 1280,
            height: 800,
        };
        let drag = Action::Drag {
            path: vec![p(640, 400), p(320, 200)],
            button: Button::Left,
        };
        assert_eq!(
            code(&drag, c).unwrap(),
            "pyautogui.moveTo(x=0.5, y=0.5)\npyautogui.dragTo(x=0.25, y=0.25, button='left')"
        );
        let scroll = Action::Scroll {
            coordinate: Some(p(128, 80)),
            dx: 0,
            dy: 3,
            modifiers: vec![],
        };
        assert_eq!(
            code(&scroll, c).unwrap(),
            "pyautogui.moveTo(x=0.1, y=0.1)\npyautogui.scroll(-3)"
        );
        assert_eq!(
            computer_code(&Action::Done { answer: None }).unwrap(),
            "computer.terminate(status='success')"
        );
        assert_eq!(code(&Action::Screenshot, c), None);
        assert_eq!(py_str("a\u{1}b"), "'a\\x01b'");
    }
}
