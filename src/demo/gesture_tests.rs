use super::*;
use pretty_assertions::assert_eq;

/// Feeds inputs at 20 ms apart (each with its outs), then a tick 2 s later.
struct Feed {
    r: Recognizer,
    now: Instant,
    outs: Vec<Out>,
}

impl Feed {
    fn new() -> Self {
        Self {
            r: Recognizer::new(Timing::default()),
            now: Instant::now(),
            outs: Vec::new(),
        }
    }
    fn at(&mut self, ms: u64, input: Input) -> Vec<Out> {
        self.now += Duration::from_millis(ms);
        let o = self.r.input(input, self.now);
        self.outs.extend(o.clone());
        o
    }
    fn ptr(&mut self, x: u16, y: u16, buttons: u8) -> Vec<Out> {
        self.at(20, Input::Pointer { x, y, buttons })
    }
    fn key(&mut self, keysym: u32, down: bool) -> Vec<Out> {
        self.at(20, Input::Key { keysym, down })
    }
    fn tap(&mut self, keysym: u32) {
        self.key(keysym, true);
        self.key(keysym, false);
    }
    fn settle(&mut self) -> Vec<Out> {
        self.now += Duration::from_secs(2);
        let o = self.r.tick(self.now);
        self.outs.extend(o.clone());
        o
    }
    fn actions(&self) -> Vec<Action> {
        self.outs
            .iter()
            .filter_map(|o| match o {
                Out::Done(a) => Some(a.clone()),
                Out::Begin => None,
            })
            .collect()
    }
    fn begins(&self) -> usize {
        self.outs.iter().filter(|o| **o == Out::Begin).count()
    }
}

fn click(x: i32, y: i32, button: Button, count: u8, modifiers: &[&str]) -> Action {
    Action::Click {
        coordinate: Some(Point::new(x, y)),
        button,
        count,
        modifiers: modifiers.iter().map(|m| (*m).to_owned()).collect(),
    }
}

const SHIFT: u32 = 0xffe1;
const CTRL: u32 = 0xffe3;
const SUPER: u32 = 0xffeb;

#[test]
fn a_click_begins_at_the_press_and_ends_after_the_double_click_window() {
    let mut f = Feed::new();
    assert_eq!(f.ptr(100, 90, 0), vec![], "hovering is no step");
    assert_eq!(f.ptr(100, 100, 1), vec![Out::Begin]);
    assert_eq!(f.ptr(101, 100, 0), vec![]);
    assert_eq!(
        f.settle(),
        vec![Out::Done(click(100, 100, Button::Left, 1, &[]))]
    );
    assert_eq!(f.ptr(300, 300, 4), vec![Out::Begin]);
    f.ptr(300, 300, 0);
    f.settle();
    assert_eq!(f.actions()[1], click(300, 300, Button::Right, 1, &[]));
}

#[test]
fn quick_second_and_third_presses_make_one_double_or_triple_click() {
    let mut f = Feed::new();
    for _ in 0..2 {
        f.ptr(50, 60, 1);
        f.ptr(50, 60, 0);
    }
    f.settle();
    for _ in 0..3 {
        f.ptr(400, 60, 1);
        f.ptr(401, 61, 0);
    }
    // A third click ends the step at once; a fourth press is a new click.
    f.ptr(400, 60, 1);
    f.ptr(400, 60, 0);
    f.settle();
    assert_eq!(
        f.actions(),
        vec![
            click(50, 60, Button::Left, 2, &[]),
            click(400, 60, Button::Left, 3, &[]),
            click(400, 60, Button::Left, 1, &[]),
        ]
    );
    assert_eq!(f.begins(), 3);
}

#[test]
fn presses_too_far_apart_in_time_or_space_are_separate_clicks() {
    let mut f = Feed::new();
    f.ptr(50, 60, 1);
    f.ptr(50, 60, 0);
    f.at(
        500,
        Input::Pointer {
            x: 50,
            y: 60,
            buttons: 1,
        },
    );
    f.ptr(50, 60, 0);
    f.ptr(90, 60, 1);
    f.ptr(90, 60, 0);
    f.settle();
    assert_eq!(
        f.actions(),
        vec![
            click(50, 60, Button::Left, 1, &[]),
            click(50, 60, Button::Left, 1, &[]),
            click(90, 60, Button::Left, 1, &[]),
        ]
    );
}

#[test]
fn a_press_that_moves_is_a_drag_along_its_path() {
    let mut f = Feed::new();
    f.ptr(10, 10, 1);
    for x in (20..=200).step_by(10) {
        f.ptr(x, 10 + x / 2, 1);
    }
    let out = f.ptr(200, 110, 0);
    let Some(Out::Done(Action::Drag { path, button })) = out.first() else {
        panic!("not a drag: {out:?}");
    };
    assert_eq!(*button, Button::Left);
    assert_eq!(path.first(), Some(&Point::new(10, 10)));
    assert_eq!(path.last(), Some(&Point::new(200, 110)));
    assert!(path.len() > 3 && path.len() < 12, "{path:?}");
}

#[test]
fn typed_text_with_shifted_capitals_is_one_type_step() {
    let mut f = Feed::new();
    f.key(SHIFT, true);
    f.tap(u32::from(b'H'));
    f.key(SHIFT, false);
    for c in "i there!".bytes() {
        f.tap(u32::from(c));
    }
    assert_eq!(f.begins(), 1);
    // Return ends the typing and is its own key step.
    assert_eq!(
        f.key(0xff0d, true),
        vec![
            Out::Done(Action::Type {
                text: "Hi there!".into()
            }),
            Out::Begin
        ]
    );
    f.key(0xff0d, false);
    f.settle();
    assert_eq!(
        f.actions()[1],
        Action::Key {
            text: "Return".into()
        }
    );
}

#[test]
fn a_pause_in_typing_splits_it() {
    let mut f = Feed::new();
    f.tap(u32::from(b'a'));
    f.at(
        1500,
        Input::Key {
            keysym: u32::from(b'b'),
            down: true,
        },
    );
    f.settle();
    assert_eq!(
        f.actions(),
        vec![
            Action::Type { text: "a".into() },
            Action::Type { text: "b".into() }
        ]
    );
}

#[test]
fn combinations_name_their_modifiers_and_the_key_not_its_case() {
    let mut f = Feed::new();
    f.key(CTRL, true);
    f.tap(u32::from(b'c'));
    f.key(CTRL, false);
    f.key(CTRL, true);
    f.key(SHIFT, true);
    f.tap(u32::from(b'T'));
    f.key(SHIFT, false);
    f.key(CTRL, false);
    f.key(SHIFT, true);
    f.tap(0xff09);
    f.key(SHIFT, false);
    f.settle();
    let texts: Vec<String> = f
        .actions()
        .into_iter()
        .map(|a| match a {
            Action::Key { text } => text,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(texts, vec!["ctrl+c", "ctrl+shift+t", "shift+Tab"]);
    assert_eq!(f.begins(), 3);
    for t in &texts {
        crate::keys::parse_sequence(t).unwrap_or_else(|e| panic!("{t}: {e}"));
    }
}

#[test]
fn a_modifier_alone_is_a_key_and_repeats_join_one_step() {
    let mut f = Feed::new();
    f.key(SUPER, true);
    assert_eq!(
        f.key(SUPER, false),
        vec![Out::Done(Action::Key {
            text: "super".into()
        })]
    );
    for _ in 0..3 {
        f.tap(0xff54);
    }
    f.settle();
    assert_eq!(
        f.actions()[1],
        Action::Key {
            text: "Down Down Down".into()
        }
    );
    assert_eq!(f.begins(), 2);
}

#[test]
fn modifiers_held_over_a_click_or_scroll_go_with_it() {
    let mut f = Feed::new();
    f.key(SHIFT, true);
    f.ptr(30, 40, 1);
    f.ptr(30, 40, 0);
    f.key(SHIFT, false);
    f.settle();
    f.key(CTRL, true);
    f.ptr(70, 80, 16);
    f.ptr(70, 80, 0);
    f.ptr(70, 80, 16);
    f.ptr(70, 80, 0);
    f.key(CTRL, false);
    f.settle();
    assert_eq!(
        f.actions(),
        vec![
            click(30, 40, Button::Left, 1, &["shift"]),
            Action::Scroll {
                coordinate: Some(Point::new(70, 80)),
                dx: 0,
                dy: 2,
                modifiers: vec!["ctrl".into()],
            },
        ]
    );
    assert_eq!(f.begins(), 2, "the modifier began each step");
}

#[test]
fn wheel_notches_join_and_a_turn_of_direction_splits() {
    let mut f = Feed::new();
    for _ in 0..3 {
        f.ptr(5, 5, 16);
        f.ptr(5, 5, 0);
    }
    f.ptr(5, 5, 8);
    f.ptr(5, 5, 0);
    f.settle();
    let dys: Vec<i32> = f
        .actions()
        .iter()
        .map(|a| match a {
            Action::Scroll { dy, .. } => *dy,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(dys, vec![3, -1]);
}

#[test]
fn every_recognized_action_is_valid_and_begun_whatever_the_input() {
    // A cheap generator: any order of presses, releases, moves and keys.
    let mut seed = 0x2545_f491_u64;
    let mut next = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let keysyms = [
        SHIFT,
        CTRL,
        SUPER,
        0xffe9,
        0x61,
        0x41,
        0x20,
        0xff0d,
        0xff54,
        0x0100_2713,
        0xfe03,
    ];
    let mut f = Feed::new();
    let mut open = false;
    for _ in 0..20_000 {
        let outs = match next(4) {
            0 => {
                let (x, y, b) = (next(1920) as u16, next(1080) as u16, next(128) as u8);
                f.at(next(600), Input::Pointer { x, y, buttons: b })
            }
            1 => {
                let k = keysyms[next(keysyms.len() as u64) as usize];
                f.at(
                    next(600),
                    Input::Key {
                        keysym: k,
                        down: next(2) == 0,
                    },
                )
            }
            2 => {
                f.now += Duration::from_millis(next(1500));
                f.r.tick(f.now)
            }
            _ => f.r.flush(),
        };
        for o in outs {
            match o {
                Out::Begin => open = true,
                Out::Done(a) => {
                    assert!(open, "{a:?} done without a begin");
                    open = false;
                    let v = serde_json::to_value(&a).expect("serializes");
                    let back: Action = serde_json::from_value(v).expect("reads back");
                    assert_eq!(back, a);
                    if let Action::Key { text } = &a {
                        crate::keys::parse_sequence(text).unwrap_or_else(|e| panic!("{text}: {e}"));
                    }
                }
            }
        }
    }
}
