//! Text from outside (a model's reply, a recording, a desktop's window title) cut to a
//! width by characters, never by bytes: a byte index inside a character panics, and the
//! text a reader gets may be anything.

/// `s` cut to at most `max` characters, ending in `…` when something was cut.
pub fn cut(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_owned(),
        Some(_) if max == 0 => String::new(),
        Some(_) => {
            let keep: String = s.chars().take(max.saturating_sub(1)).collect();
            format!("{keep}…")
        }
    }
}

/// `s` on one line (runs of whitespace, line breaks included, become one space), cut to at
/// most `max` characters.
pub fn one_line(s: &str, max: usize) -> String {
    let flat: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    cut(&flat, max)
}

/// `s` safe to print on a terminal: control characters but newlines and tabs become U+FFFD.
/// For text the agent controls (window titles and classes, element names, file names in its
/// desktop): an escape sequence there could otherwise retitle, recolour or write to the
/// clipboard of the terminal of whoever runs the CLI (OSC 52).
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                '\u{fffd}'
            } else {
                c
            }
        })
        .collect()
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
pub fn prefix(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Parses sizes such as `512m`, `2g`, `1.5g` or a plain number of bytes.
pub fn parse_size(s: &str) -> Result<i64, String> {
    let s = s.trim().to_ascii_lowercase();
    let (num, mult) = match s.chars().last() {
        Some('k') => (&s[..s.len() - 1], 1i64 << 10),
        Some('m') => (&s[..s.len() - 1], 1 << 20),
        Some('g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s.as_str(), 1),
    };
    let n: f64 = num
        .trim_end_matches(['b', 'i'])
        .parse()
        .map_err(|_| format!("'{s}' is not a size (use e.g. 512m or 2g)"))?;
    if n <= 0.0 {
        return Err(format!("'{s}' must be positive"));
    }
    Ok((n * mult as f64) as i64)
}

/// Equal bytes, in time that does not depend on where they differ (tokens, passwords).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// `bytes` random bytes as hex: tokens.
pub fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_never_reach_a_terminal() {
        assert_eq!(
            printable("a\x1b]52;c;x\x07b\n\tc\u{9b}2J"),
            "a\u{fffd}]52;c;x\u{fffd}b\n\tc\u{fffd}2J"
        );
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"", b"a"));
        assert_eq!(random_hex(4).len(), 8);
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("512m"), Ok(512 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("1024"), Ok(1024));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("-1g").is_err());
    }

    #[test]
    fn cutting_counts_characters() {
        assert_eq!(cut("hello", 10), "hello");
        assert_eq!(cut("hello", 5), "hello");
        assert_eq!(cut("hello!", 5), "hell…");
        assert_eq!(cut("aéééééé", 4), "aéé…");
        assert_eq!(cut("日本語のテキスト", 3), "日本…");
        assert_eq!(cut("abc", 0), "");
        assert_eq!(one_line("a\n  b\tc", 10), "a b c");
        assert_eq!(one_line("é\né\né", 4), "é é…");
        assert_eq!(prefix("aé", 2), "a");
        assert_eq!(prefix("aé", 3), "aé");
    }
}
