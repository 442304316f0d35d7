//! The screen's accessibility tree (AT-SPI), as OSWorld serves it to its getters and its
//! agents read it: the office image's `a11y.py` walks the tree as the desktop's user and
//! writes OSWorld's XML; OSWorld's own `linearize_accessibility_tree` (from the installed
//! package) turns it into one element a line. Only the office image has AT-SPI's Python
//! bindings and OSWorld's package.

use super::exec::ExecOptions;
use super::{Sandbox, SandboxError};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The walker in the office image.
const SCRIPT: &str = "/opt/selfagent/osworld/a11y.py";
/// The system Python (AT-SPI's bindings) and OSWorld's environment (its linearizer).
const SYSTEM_PYTHON: &str = "/usr/bin/python3";
const OSWORLD_PYTHON: &str = "/opt/osworld/bin/python";
/// A large tree (a spreadsheet, a long web page) takes a few seconds to walk.
const TIMEOUT: Duration = Duration::from_secs(60);

/// One element of OSWorld's linearized tree.
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

/// An element as `a11y.py rows` writes it (points as OSWorld writes them: `(x, y)`).
#[derive(Deserialize)]
struct Row {
    tag: String,
    name: String,
    text: String,
    class: String,
    description: String,
    position: String,
    size: String,
}

/// `(x, y)` as OSWorld writes a point.
fn pair(s: &str) -> Option<[i64; 2]> {
    let inner = s.trim().strip_prefix('(')?.strip_suffix(')')?;
    let (a, b) = inner.split_once(',')?;
    Some([a.trim().parse().ok()?, b.trim().parse().ok()?])
}

/// The elements `a11y.py rows` wrote.
pub fn parse_rows(json: &str) -> Result<Vec<Element>, serde_json::Error> {
    let rows: Vec<Row> = serde_json::from_str(json)?;
    Ok(rows
        .into_iter()
        .map(|r| Element {
            position: pair(&r.position),
            size: pair(&r.size),
            tag: r.tag,
            name: r.name,
            text: r.text,
            class: r.class,
            description: r.description,
        })
        .collect())
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

    /// The tree as OSWorld's XML without elements' values and actions: what the linearized
    /// form is made of (OSWorld's filter and linearizer never read those, and each costs
    /// round trips to the app for every element: `selfagent bench` on the office image
    /// measures both).
    pub async fn accessibility_xml_lean(&self) -> Result<String, SandboxError> {
        self.a11y_run(&[SYSTEM_PYTHON, "-I", SCRIPT, "dump", "--lean"], None)
            .await
    }

    /// The tree in OSWorld's linearized form (its header line first).
    pub async fn accessibility_tree(&self) -> Result<String, SandboxError> {
        self.a11y_of_tree("linearize").await
    }

    /// The elements of the linearized form, one by one.
    pub async fn accessibility_elements(&self) -> Result<Vec<Element>, SandboxError> {
        let json = self.a11y_of_tree("rows").await?;
        parse_rows(&json).map_err(|e| {
            SandboxError::Invalid(format!("reading the accessibility tree's elements: {e}"))
        })
    }

    /// The tree read, then `mode` of it made by OSWorld's environment.
    async fn a11y_of_tree(&self, mode: &str) -> Result<String, SandboxError> {
        let xml = self.accessibility_xml_lean().await?;
        self.a11y_of(&xml, mode).await
    }

    /// `mode` (`linearize`, `rows`) of an XML tree, made by OSWorld's environment.
    pub async fn a11y_of(&self, xml: &str, mode: &str) -> Result<String, SandboxError> {
        self.a11y_run(
            &[OSWORLD_PYTHON, "-I", SCRIPT, mode],
            Some(xml.as_bytes().to_vec()),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_read_back_and_escapes_never_reach_a_terminal() {
        let json = r#"[{"tag":"menu","name":"File","text":"","class":"","description":"","position":"(5, 56)","size":"(37, 27)"},
            {"tag":"text","name":"","text":"two\nlines\tand a tab","class":"","description":"","position":"","size":""}]"#;
        let rows = parse_rows(json).unwrap();
        assert_eq!(rows[0].position, Some([5, 56]));
        assert_eq!(rows[0].size, Some([37, 27]));
        assert_eq!(rows[1].text, "two\nlines\tand a tab");
        assert_eq!(rows[1].position, None);
        assert!(parse_rows("[{\"tag\": 1}]").is_err());
        assert_eq!(pair("(-1, 7)"), Some([-1, 7]));
        assert_eq!(pair("7"), None);
    }
}
