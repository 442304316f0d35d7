//! The screen's accessibility tree (AT-SPI), as OSWorld serves it to its getters and its
//! agents read it: the office image's `a11y.py` walks the tree as the desktop's user and
//! writes OSWorld's XML; OSWorld's own `linearize_accessibility_tree` (from the installed
//! package) turns it into one element a line. Only the office image has AT-SPI's Python
//! bindings and OSWorld's package.

use super::exec::ExecOptions;
use super::{Sandbox, SandboxError};
use serde::Serialize;
use std::time::Duration;

/// The walker in the office image.
const SCRIPT: &str = "/opt/selfagent/osworld/a11y.py";
/// The system Python (AT-SPI's bindings) and OSWorld's environment (its linearizer).
const SYSTEM_PYTHON: &str = "/usr/bin/python3";
const OSWORLD_PYTHON: &str = "/opt/osworld/bin/python";
/// A large tree (a spreadsheet, a long web page) takes a few seconds to walk.
const TIMEOUT: Duration = Duration::from_secs(60);

/// One line of OSWorld's linearized tree.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Element {
    pub tag: String,
    pub name: String,
    pub text: String,
    pub class: String,
    pub description: String,
    /// Top-left corner in screen pixels.
    pub position: Option<[i64; 2]>,
    pub size: Option<[i64; 2]>,
}

/// `(x, y)` as OSWorld writes a point.
fn pair(s: &str) -> Option<[i64; 2]> {
    let inner = s.trim().strip_prefix('(')?.strip_suffix(')')?;
    let (a, b) = inner.split_once(',')?;
    Some([a.trim().parse().ok()?, b.trim().parse().ok()?])
}

/// OSWorld's linearized form read back: its header line, then tab-separated fields.
pub fn parse_linearized(text: &str) -> Vec<Element> {
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            let get = |i: usize| f.get(i).copied().unwrap_or_default().to_owned();
            Element {
                tag: get(0),
                name: get(1),
                text: get(2),
                class: get(3),
                description: get(4),
                position: f.get(5).and_then(|s| pair(s)),
                size: f.get(6).and_then(|s| pair(s)),
            }
        })
        .collect()
}

impl Sandbox {
    async fn a11y_run(
        &self,
        argv: &[&str],
        stdin: Option<Vec<u8>>,
    ) -> Result<String, SandboxError> {
        let out = self
            .exec(
                argv,
                &ExecOptions {
                    stdin,
                    timeout: Some(TIMEOUT),
                    ..ExecOptions::default()
                },
            )
            .await?;
        if !out.success() {
            let err = out.stderr_text();
            return Err(SandboxError::Invalid(
                if err.contains("No such file") || err.contains("can't open file") {
                    "the accessibility tree is read on the office desktop (`selfagent sandbox \
                     build --flavor office`, then `sandbox up --image selfagent-desktop:office`)"
                        .to_owned()
                } else if out.timed_out {
                    format!("reading the accessibility tree took more than {TIMEOUT:?}")
                } else {
                    format!(
                        "reading the accessibility tree failed: {}",
                        crate::text::cut(err.trim(), 2000)
                    )
                },
            ));
        }
        Ok(out.stdout_text())
    }

    /// The tree as OSWorld's XML.
    pub async fn accessibility_xml(&self) -> Result<String, SandboxError> {
        self.a11y_run(&[SYSTEM_PYTHON, "-I", SCRIPT, "dump"], None)
            .await
    }

    /// The tree in OSWorld's linearized form (its header line first), and its XML.
    pub async fn accessibility_tree(&self) -> Result<(String, String), SandboxError> {
        let xml = self.accessibility_xml().await?;
        let text = self
            .a11y_run(
                &[OSWORLD_PYTHON, "-I", SCRIPT, "linearize"],
                Some(xml.clone().into_bytes()),
            )
            .await?;
        Ok((text, xml))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_linearized_form_reads_back() {
        let text = "tag\tname\ttext\tclass\tdescription\tposition (top-left x&y)\tsize (w&h)\n\
                    menu\tFile\t\"\"\t\t\t(5, 56)\t(37, 27)\n\
                    text\t\thello\tmousepad\t\t(6, 86)\t(638, 447)\n\
                    label\tbroken\n";
        let rows = parse_linearized(text);
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].tag, "menu");
        assert_eq!(rows[0].position, Some([5, 56]));
        assert_eq!(rows[1].text, "hello");
        assert_eq!(rows[1].size, Some([638, 447]));
        assert_eq!((rows[2].position, rows[2].text.as_str()), (None, ""));
        assert_eq!(pair("(-1, 7)"), Some([-1, 7]));
        assert_eq!(pair("7"), None);
    }
}
