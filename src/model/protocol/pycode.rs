//! The subset of Python that computer-use models emit as actions: calls with literal
//! arguments, one or several per block (`pyautogui.click(x=1, y=2); pyautogui.write('a;b')`),
//! and UI-TARS's `click(start_box='(1,2)')`. It is **parsed, never executed**: anything
//! outside the subset (assignments, loops, names, arithmetic) is an unusable statement with
//! the reason, for the model to hear.
//!
//! [`calls`] splits a block into statements (on newlines and `;` outside strings and
//! brackets), skips `import` lines and comments, and reads each statement as a call:
//! a dotted name, then positional and keyword arguments that are literals: numbers, strings
//! (single, double and triple quoted, with escapes and `r` prefixes), `True`/`False`/`None`,
//! lists and tuples of literals.

/// A literal argument.
#[derive(Debug, Clone, PartialEq)]
pub enum Lit {
    Num(f64),
    Str(String),
    Bool(bool),
    None,
    List(Vec<Lit>),
}

impl Lit {
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Self::Num(n) => Some(*n),
            Self::Str(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// One call: `pyautogui.click(100, 200, button='right')`.
#[derive(Debug, Clone, PartialEq)]
pub struct PyCall {
    /// The dotted name as written (`pyautogui.click`, `computer.wait`, `click`).
    pub name: String,
    pub args: Vec<Lit>,
    pub kwargs: Vec<(String, Lit)>,
    /// The statement's text, for messages.
    pub source: String,
}

impl PyCall {
    /// The last part of the name (`click` for `pyautogui.click`).
    pub fn func(&self) -> &str {
        self.name.rsplit('.').next().unwrap_or(&self.name)
    }

    /// The module part (`pyautogui`, `computer`, `time`), empty for a bare name.
    pub fn module(&self) -> &str {
        self.name.rsplit_once('.').map_or("", |(m, _)| m)
    }

    /// A keyword argument, or else the positional one at `index`.
    pub fn arg(&self, key: &str, index: usize) -> Option<&Lit> {
        self.kwargs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
            .or_else(|| self.args.get(index))
            .filter(|v| **v != Lit::None)
    }
}

/// Splits `code` into statements and reads each as a call; each statement is the call or
/// why it is not one.
pub fn calls(code: &str) -> Vec<Result<PyCall, String>> {
    statements(code)
        .into_iter()
        .filter(|s| !s.starts_with("import ") && !s.starts_with("from "))
        .map(|s| parse_call(&s).map_err(|e| format!("`{}`: {e}", short(&s))))
        .collect()
}

fn short(s: &str) -> String {
    crate::text::one_line(s, 81)
}

/// Statements: split on newlines and `;` outside strings and brackets; comments removed.
fn statements(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut depth = 0i32;
    let mut chars = code.chars().peekable();
    let mut quote: Option<(char, bool)> = None; // (quote char, triple)
    while let Some(c) = chars.next() {
        if let Some((q, triple)) = quote {
            cur.push(c);
            if c == '\\' {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            } else if c == q {
                if triple {
                    if chars.peek() == Some(&q) {
                        cur.push(q);
                        chars.next();
                        if chars.peek() == Some(&q) {
                            cur.push(q);
                            chars.next();
                            quote = None;
                        }
                    }
                } else {
                    quote = None;
                }
            }
            continue;
        }
        match c {
            '\'' | '"' => {
                cur.push(c);
                let mut n = 1;
                while chars.peek() == Some(&c) && n < 3 {
                    cur.push(c);
                    chars.next();
                    n += 1;
                }
                match n {
                    // An empty string '' opens nothing.
                    2 => {}
                    3 => quote = Some((c, true)),
                    _ => quote = Some((c, false)),
                }
            }
            '#' => {
                // A comment runs to the end of the line.
                while let Some(&n) = chars.peek() {
                    if n == '\n' {
                        break;
                    }
                    chars.next();
                }
            }
            '(' | '[' | '{' => {
                depth += 1;
                cur.push(c);
            }
            ')' | ']' | '}' => {
                depth -= 1;
                cur.push(c);
            }
            '\n' | ';' if depth <= 0 => {
                let s = cur.trim().to_owned();
                if !s.is_empty() {
                    out.push(s);
                }
                cur.clear();
                depth = 0;
            }
            _ => cur.push(c),
        }
    }
    let s = cur.trim().to_owned();
    if !s.is_empty() {
        out.push(s);
    }
    out
}

struct Lexer<'a> {
    s: &'a [u8],
    text: &'a str,
    i: usize,
}

impl<'a> Lexer<'a> {
    fn new(text: &'a str) -> Self {
        Self {
            s: text.as_bytes(),
            text,
            i: 0,
        }
    }

    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.s.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn ident(&mut self) -> Option<String> {
        self.ws();
        let start = self.i;
        while self.i < self.s.len()
            && (self.s[self.i].is_ascii_alphanumeric() || self.s[self.i] == b'_')
        {
            self.i += 1;
        }
        (self.i > start && !self.s[start].is_ascii_digit())
            .then(|| self.text[start..self.i].to_owned())
    }

    fn literal(&mut self) -> Result<Lit, String> {
        match self.peek() {
            None => Err("an argument is missing".into()),
            Some(b'[' | b'(') => {
                let close = if self.s[self.i] == b'[' { b']' } else { b')' };
                self.i += 1;
                let mut items = Vec::new();
                loop {
                    if self.eat(close) {
                        return Ok(Lit::List(items));
                    }
                    items.push(self.literal()?);
                    if !self.eat(b',') && self.peek() != Some(close) {
                        return Err("a list is not closed".into());
                    }
                }
            }
            Some(b'\'' | b'"') => self.string(false),
            Some(c) if c.is_ascii_digit() || c == b'-' || c == b'+' || c == b'.' => self.number(),
            Some(_) => {
                let save = self.i;
                let word = self.ident().ok_or("not a literal")?;
                match word.as_str() {
                    "True" => Ok(Lit::Bool(true)),
                    "False" => Ok(Lit::Bool(false)),
                    "None" => Ok(Lit::None),
                    "r" | "R" | "u" | "U" if matches!(self.s.get(self.i), Some(b'\'' | b'"')) => {
                        self.string(word.eq_ignore_ascii_case("r"))
                    }
                    _ => {
                        self.i = save;
                        Err(format!(
                            "`{word}` is a name, not a literal value (nothing is executed)"
                        ))
                    }
                }
            }
        }
    }

    fn number(&mut self) -> Result<Lit, String> {
        let start = self.i;
        if matches!(self.s[self.i], b'-' | b'+') {
            self.i += 1;
        }
        while self.i < self.s.len()
            && (self.s[self.i].is_ascii_digit()
                || matches!(self.s[self.i], b'.' | b'e' | b'E' | b'_'))
        {
            if matches!(self.s[self.i], b'e' | b'E')
                && matches!(self.s.get(self.i + 1), Some(b'-' | b'+'))
            {
                self.i += 1;
            }
            self.i += 1;
        }
        let text: String = self.text[start..self.i]
            .chars()
            .filter(|c| *c != '_')
            .collect();
        text.parse::<f64>()
            .ok()
            .filter(|n| n.is_finite())
            .map(Lit::Num)
            .ok_or_else(|| format!("`{text}` is not a number"))
    }

    fn string(&mut self, raw: bool) -> Result<Lit, String> {
        self.ws();
        let q = self.s[self.i];
        let triple = self.s.get(self.i + 1) == Some(&q) && self.s.get(self.i + 2) == Some(&q);
        self.i += if triple { 3 } else { 1 };
        let mut out = String::new();
        let rest = &self.text[self.i..];
        let mut chars = rest.char_indices().peekable();
        while let Some((at, c)) = chars.next() {
            if c == q as char {
                if !triple {
                    self.i += at + 1;
                    return Ok(Lit::Str(out));
                }
                if rest[at..].starts_with(&format!("{0}{0}{0}", q as char)) {
                    self.i += at + 3;
                    return Ok(Lit::Str(out));
                }
                out.push(c);
            } else if c == '\\' && !raw {
                match chars.next() {
                    Some((_, 'n')) => out.push('\n'),
                    Some((_, 't')) => out.push('\t'),
                    Some((_, 'r')) => out.push('\r'),
                    Some((_, '0')) => out.push('\0'),
                    Some((_, '\n')) => {}
                    Some((_, 'u')) => {
                        let hex: String = (0..4)
                            .filter_map(|_| chars.next().map(|(_, c)| c))
                            .collect();
                        out.push(
                            u32::from_str_radix(&hex, 16)
                                .ok()
                                .and_then(char::from_u32)
                                .ok_or("a bad \\u escape")?,
                        );
                    }
                    Some((_, other)) => out.push(other),
                    None => return Err("a string is not closed".into()),
                }
            } else if c == '\n' && !triple {
                return Err("a string is not closed on its line".into());
            } else {
                out.push(c);
            }
        }
        Err("a string is not closed".into())
    }
}

/// Reads one statement as a call.
fn parse_call(stmt: &str) -> Result<PyCall, String> {
    let mut lx = Lexer::new(stmt);
    let mut name = lx.ident().ok_or("not a call")?;
    while lx.eat(b'.') {
        name.push('.');
        name.push_str(&lx.ident().ok_or("not a call")?);
    }
    if !lx.eat(b'(') {
        return Err("only calls are understood (no assignments, loops or expressions)".into());
    }
    let mut args = Vec::new();
    let mut kwargs: Vec<(String, Lit)> = Vec::new();
    loop {
        if lx.eat(b')') {
            break;
        }
        // A keyword argument: `name=`, but not `name==`.
        let save = lx.i;
        let kw = lx
            .ident()
            .filter(|_| lx.peek() == Some(b'=') && lx.s.get(lx.i + 1) != Some(&b'='));
        match kw {
            Some(k) => {
                lx.eat(b'=');
                let v = lx.literal()?;
                kwargs.push((k, v));
            }
            None => {
                lx.i = save;
                if !kwargs.is_empty() {
                    return Err("a positional argument after a keyword one".into());
                }
                args.push(lx.literal()?);
            }
        }
        if !lx.eat(b',') && lx.peek() != Some(b')') {
            return Err("the arguments are not literals separated by commas".into());
        }
    }
    if lx.peek().is_some() {
        return Err("something follows the call".into());
    }
    Ok(PyCall {
        name,
        args,
        kwargs,
        source: stmt.to_owned(),
    })
}

/// The code of the last fenced block in `text` (```python, ```code or bare ```), if any.
pub fn last_code_block(text: &str) -> Option<String> {
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("```") {
        let after = &rest[start + 3..];
        // The language tag runs to the end of the line.
        let body_start = after.find('\n').map_or(after.len(), |n| n + 1);
        let tag = after[..body_start].trim();
        let body = &after[body_start..];
        let Some(end) = body.find("```") else {
            // An unterminated block: what follows is the code.
            if tag.chars().all(|c| c.is_ascii_alphanumeric()) {
                blocks.push(body.to_owned());
            }
            break;
        };
        blocks.push(body[..end].to_owned());
        rest = &body[end + 3..];
    }
    blocks.pop().map(|b| b.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    fn one(code: &str) -> PyCall {
        let mut c = calls(code);
        assert_eq!(c.len(), 1, "{code}: {c:?}");
        c.remove(0).unwrap()
    }

    #[test]
    fn calls_with_literals_parse() {
        let c = one("pyautogui.click(x=123, y=456)");
        assert_eq!((c.module(), c.func()), ("pyautogui", "click"));
        assert_eq!(c.arg("x", 0), Some(&Lit::Num(123.0)));
        let c = one("pyautogui.hotkey('ctrl', \"shift\", 't')");
        assert_eq!(c.args.len(), 3);
        let c = one("pyautogui.press(['down', 'down'], presses=2)");
        assert_eq!(
            c.arg("keys", 0),
            Some(&Lit::List(vec![
                Lit::Str("down".into()),
                Lit::Str("down".into())
            ]))
        );
        let c = one("computer.terminate(status=\"success\", answer='''It is 42.\nDone''')");
        assert_eq!(
            c.arg("answer", 1),
            Some(&Lit::Str("It is 42.\nDone".into()))
        );
        let c = one("pyautogui.moveTo(x=0.328, y=-.5)");
        assert_eq!(c.arg("y", 1), Some(&Lit::Num(-0.5)));
    }

    #[test]
    fn strings_keep_separators_quotes_and_escapes() {
        let all = calls(
            "import pyautogui\npyautogui.write('a;b\\n'); pyautogui.write(\"it's\") # done\npyautogui.write('don\\'t')",
        );
        let texts: Vec<String> = all
            .into_iter()
            .map(|c| {
                c.unwrap()
                    .arg("message", 0)
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(texts, vec!["a;b\n", "it's", "don't"]);
        assert_eq!(
            one("write(r'C:\\path')").args[0],
            Lit::Str("C:\\path".into())
        );
    }

    #[test]
    fn anything_else_is_refused_with_a_reason() {
        for code in [
            "x = 5",
            "for i in range(3): pyautogui.click(1, 2)",
            "pyautogui.click(x, y)",
            "pyautogui.click(1 + 2, 3)",
            "os.system('rm -rf /')",
            "pyautogui.click(1, 2) + 1",
            "pyautogui.write('open",
        ] {
            let c = calls(code);
            let refused = c.iter().any(Result::is_err)
                || c.iter()
                    .any(|c| c.as_ref().is_ok_and(|c| c.module() == "os"));
            assert!(refused, "{code}: {c:?}");
        }
    }

    #[test]
    fn code_blocks_are_found() {
        assert_eq!(
            last_code_block("## Code:\n```python\npyautogui.click(1, 2)\n```").as_deref(),
            Some("pyautogui.click(1, 2)")
        );
        assert_eq!(
            last_code_block("```\nWAIT\n```\nthen\n```code\ncomputer.wait()\n```").as_deref(),
            Some("computer.wait()")
        );
        assert_eq!(last_code_block("no code here"), None);
    }
}
