//! Key names to X keysyms.
//!
//! Names follow xdotool and X keysym names (`Return`, `ctrl+shift+t`, `super`, `KP_Enter`),
//! as models trained on Anthropic's tool emit them; OpenAI-style names (`ENTER`, `CTRL`,
//! `ARROWLEFT`) and a few common aliases map too. Lookup order: exact keysym name, alias,
//! case- and underscore-insensitive keysym name, then a single character. Anything else is an
//! error that names the closest known keys.
//!
//! Text is typed as one keysym per character: Latin-1 characters use their own keysym, every
//! other character the Unicode keysym `0x0100_0000 + code point`, which the X server binds
//! to a spare keycode on the fly. No keyboard layout is assumed.
//!
//! The keysym table (`keysyms.rs`) is generated from x11proto's headers; its header holds
//! the script.

mod keysyms;

use keysyms::KEYSYMS;

pub const XK_RETURN: u32 = 0xff0d;
pub const XK_TAB: u32 = 0xff09;
pub const XK_BACKSPACE: u32 = 0xff08;
pub const XK_ESCAPE: u32 = 0xff1b;
pub const XK_SHIFT_L: u32 = 0xffe1;

/// Aliases, matched after lowercasing and removing `_`, `-` and spaces.
const ALIASES: &[(&str, &str)] = &[
    ("ctrl", "Control_L"),
    ("control", "Control_L"),
    ("ctl", "Control_L"),
    ("lctrl", "Control_L"),
    ("leftctrl", "Control_L"),
    ("rctrl", "Control_R"),
    ("rightctrl", "Control_R"),
    ("alt", "Alt_L"),
    ("lalt", "Alt_L"),
    ("leftalt", "Alt_L"),
    ("option", "Alt_L"),
    ("ralt", "Alt_R"),
    ("rightalt", "Alt_R"),
    ("altgr", "ISO_Level3_Shift"),
    ("shift", "Shift_L"),
    ("lshift", "Shift_L"),
    ("leftshift", "Shift_L"),
    ("rshift", "Shift_R"),
    ("rightshift", "Shift_R"),
    ("super", "Super_L"),
    ("lsuper", "Super_L"),
    ("rsuper", "Super_R"),
    ("win", "Super_L"),
    ("windows", "Super_L"),
    ("meta", "Super_L"),
    ("cmd", "Super_L"),
    ("command", "Super_L"),
    ("os", "Super_L"),
    ("enter", "Return"),
    ("return", "Return"),
    ("esc", "Escape"),
    ("del", "Delete"),
    ("ins", "Insert"),
    ("backspace", "BackSpace"),
    ("bksp", "BackSpace"),
    ("pgup", "Prior"),
    ("pageup", "Prior"),
    ("pgdn", "Next"),
    ("pgdown", "Next"),
    ("pagedown", "Next"),
    ("arrowup", "Up"),
    ("arrowdown", "Down"),
    ("arrowleft", "Left"),
    ("arrowright", "Right"),
    ("spacebar", "space"),
    ("capslock", "Caps_Lock"),
    ("numlock", "Num_Lock"),
    ("scrolllock", "Scroll_Lock"),
    ("printscreen", "Print"),
    ("prtsc", "Print"),
    ("prtscr", "Print"),
    ("apps", "Menu"),
    ("contextmenu", "Menu"),
    ("volumeup", "XF86AudioRaiseVolume"),
    ("volumedown", "XF86AudioLowerVolume"),
    ("mute", "XF86AudioMute"),
];

fn normalize(name: &str) -> String {
    name.chars()
        .filter(|c| !matches!(c, '_' | '-' | ' '))
        .flat_map(char::to_lowercase)
        .collect()
}

fn exact(name: &str) -> Option<u32> {
    KEYSYMS
        .binary_search_by(|(n, _)| (*n).cmp(name))
        .ok()
        .map(|i| KEYSYMS[i].1)
}

/// The keysym for one key name, or a message naming the closest known keys.
pub fn lookup(name: &str) -> Result<u32, String> {
    if let Some(sym) = exact(name) {
        return Ok(sym);
    }
    let norm = normalize(name);
    if let Some((_, target)) = ALIASES.iter().find(|(alias, _)| *alias == norm)
        && let Some(sym) = exact(target)
    {
        return Ok(sym);
    }
    if !norm.is_empty()
        && let Some((_, sym)) = KEYSYMS.iter().find(|(n, _)| normalize(n) == norm)
    {
        return Ok(*sym);
    }
    let mut chars = name.chars();
    if let (Some(c), None) = (chars.next(), chars.next()) {
        return char_keysym(c);
    }
    Err(unknown_key(name))
}

fn unknown_key(name: &str) -> String {
    let norm = normalize(name);
    let mut candidates: Vec<(usize, &str)> = ALIASES
        .iter()
        .map(|(alias, _)| *alias)
        .chain(KEYSYMS.iter().map(|(n, _)| *n))
        .map(|candidate| (edit_distance(&norm, &normalize(candidate)), candidate))
        .filter(|(d, _)| *d <= 2.max(norm.len() / 3))
        .collect();
    candidates.sort();
    candidates.dedup_by(|a, b| a.1 == b.1);
    let hint = if candidates.is_empty() {
        "use X keysym names such as Return, Tab, Escape, BackSpace, Page_Up, F5, \
         ctrl, alt, shift, super, or a single character"
            .to_owned()
    } else {
        let names: Vec<&str> = candidates.iter().take(3).map(|(_, n)| *n).collect();
        format!("did you mean {}?", names.join(", "))
    };
    format!("unknown key '{name}': {hint}")
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The keysym that types one character.
pub fn char_keysym(c: char) -> Result<u32, String> {
    match c {
        '\n' | '\r' => Ok(XK_RETURN),
        '\t' => Ok(XK_TAB),
        '\u{8}' => Ok(XK_BACKSPACE),
        '\u{1b}' => Ok(XK_ESCAPE),
        ' '..='~' | '\u{a0}'..='\u{ff}' => Ok(c as u32),
        c if c.is_control() => Err(format!("cannot type control character U+{:04X}", c as u32)),
        c => Ok(0x0100_0000 | c as u32),
    }
}

/// Checks that every character of `text` can be typed.
pub fn check_typeable(text: &str) -> Result<(), String> {
    text.chars().try_for_each(|c| char_keysym(c).map(|_| ()))
}

/// The modifier a keysym is, by the name combos use (`ctrl`, `alt`, `shift`, `super`);
/// `None` for every other key. Meta counts as alt and Hyper as super, as X maps them.
pub fn modifier_name(keysym: u32) -> Option<&'static str> {
    match keysym {
        0xffe1 | 0xffe2 => Some("shift"),
        0xffe3 | 0xffe4 => Some("ctrl"),
        0xffe7..=0xffea => Some("alt"),
        0xffeb..=0xffee => Some("super"),
        _ => None,
    }
}

/// The character a keysym types, for keys that type one (`None` for Return, Tab, the
/// arrows, function keys, modifiers): the inverse of [`char_keysym`] on printable text.
pub fn keysym_char(keysym: u32) -> Option<char> {
    match keysym {
        0x20..=0x7e | 0xa0..=0xff => char::from_u32(keysym),
        0x0100_0100..=0x0110_ffff => {
            char::from_u32(keysym - 0x0100_0000).filter(|c| !c.is_control())
        }
        _ => None,
    }
}

/// A key's name as combos and `lookup` take it: the common names models use
/// (`Return`, `Page_Up`), else the X keysym name, else the character it types.
pub fn keysym_name(keysym: u32) -> String {
    const PREFERRED: &[(u32, &str)] = &[
        (0xff55, "Page_Up"),
        (0xff56, "Page_Down"),
        (0xff0d, "Return"),
        (0x20, "space"),
        (0x2b, "plus"),
        (0xfe03, "ISO_Level3_Shift"),
    ];
    if let Some((_, name)) = PREFERRED.iter().find(|(sym, _)| *sym == keysym) {
        return (*name).to_owned();
    }
    if let Some(c) = keysym_char(keysym) {
        return c.to_string();
    }
    if let Some((name, _)) = KEYSYMS.iter().find(|(_, sym)| *sym == keysym) {
        return (*name).to_owned();
    }
    format!("0x{keysym:x}")
}

/// Keys pressed together: modifiers first, released in reverse order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Combo {
    pub keysyms: Vec<u32>,
}

/// One combo such as `ctrl+shift+t`, `ctrl++` or `KP_Add`.
pub fn parse_combo(text: &str) -> Result<Combo, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty key combo".to_owned());
    }
    // A trailing `+` after a separator is the plus key itself: `ctrl++`.
    let (head, plus) = match text.strip_suffix("++") {
        Some(head) => (head, true),
        None if text == "+" => ("", true),
        None => (text, false),
    };
    let mut keysyms = Vec::new();
    if !head.is_empty() {
        for part in head.split('+') {
            if part.trim().is_empty() {
                return Err(format!("empty key name in combo '{text}'"));
            }
            keysyms.push(lookup(part.trim())?);
        }
    }
    if plus {
        keysyms.push(u32::from(b'+'));
    }
    Ok(Combo { keysyms })
}

/// A sequence of combos separated by whitespace, as xdotool's `key` takes them.
pub fn parse_sequence(text: &str) -> Result<Vec<Combo>, String> {
    if text == " " {
        return Ok(vec![Combo {
            keysyms: vec![u32::from(b' ')],
        }]);
    }
    let combos: Vec<Combo> = text
        .split_whitespace()
        .map(parse_combo)
        .collect::<Result<_, _>>()?;
    if combos.is_empty() {
        return Err("no key given: use names such as Return, ctrl+s or alt+F4".to_owned());
    }
    Ok(combos)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    #[test]
    fn keysym_names_read_back_as_the_same_key() {
        for sym in [
            0xff0d,
            0xff55,
            0xff56,
            0xff08,
            0xff51,
            0xffc9,
            0x61,
            0x41,
            0x2b,
            0x20,
            0xe9,
            0x0100_2713,
            0x1008ff12,
        ] {
            let name = keysym_name(sym);
            assert_eq!(lookup(&name), Ok(sym), "{sym:#x} named {name}");
        }
        assert_eq!(keysym_name(0xff0d), "Return");
        assert_eq!(keysym_char(0x61), Some('a'));
        assert_eq!(keysym_char(0xff0d), None);
        assert_eq!(modifier_name(0xffe4), Some("ctrl"));
        assert_eq!(modifier_name(0x61), None);
    }

    #[test]
    fn table_is_sorted_for_binary_search() {
        assert!(KEYSYMS.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(KEYSYMS.len() > 2000);
    }

    #[test]
    fn names_aliases_and_openai_names_resolve() {
        for (name, sym) in [
            ("Return", 0xff0d),
            ("KP_Enter", 0xff8d),
            ("ctrl", 0xffe3),
            ("CTRL", 0xffe3),
            ("ENTER", 0xff0d),
            ("ARROWLEFT", 0xff51),
            ("PAGEDOWN", 0xff56),
            ("Page_Up", 0xff55),
            ("BACKSPACE", 0xff08),
            ("capslock", 0xffe5),
            ("super", 0xffeb),
            ("F12", 0xffc9),
            ("XF86AudioMute", 0x1008ff12),
            ("a", 0x61),
            ("A", 0x41),
            ("é", 0xe9),
            ("✓", 0x0100_2713),
            ("plus", 0x2b),
        ] {
            assert_eq!(lookup(name), Ok(sym), "{name}");
        }
    }

    #[test]
    fn unknown_keys_suggest_neighbours() {
        let err = lookup("Retrun").unwrap_err();
        assert!(
            err.contains("unknown key 'Retrun'") && err.contains("Return"),
            "{err}"
        );
        let err = lookup("zzzzqqqq").unwrap_err();
        assert!(err.contains("use X keysym names"), "{err}");
    }

    #[test]
    fn combos_and_sequences() {
        assert_eq!(
            parse_combo("ctrl+shift+t").unwrap().keysyms,
            vec![0xffe3, 0xffe1, 0x74]
        );
        assert_eq!(parse_combo("ctrl++").unwrap().keysyms, vec![0xffe3, 0x2b]);
        assert_eq!(parse_combo("+").unwrap().keysyms, vec![0x2b]);
        assert_eq!(parse_sequence("ctrl+a Delete").unwrap().len(), 2);
        assert_eq!(parse_sequence(" ").unwrap()[0].keysyms, vec![0x20]);
        assert!(parse_combo("ctrl+").is_err());
        assert!(parse_combo("ctrl++shift").is_err());
        assert!(parse_sequence("   ").is_err());
    }

    #[test]
    fn characters_become_keysyms() {
        assert_eq!(char_keysym('\n'), Ok(XK_RETURN));
        assert_eq!(char_keysym('ö'), Ok(0xf6));
        assert_eq!(char_keysym('€'), Ok(0x0100_20ac));
        assert_eq!(char_keysym('😀'), Ok(0x0101_f600));
        assert!(char_keysym('\u{7}').is_err());
    }
}
