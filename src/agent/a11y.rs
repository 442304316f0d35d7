//! The accessibility tree as a model observes it (`--observe screenshot+a11y` or `a11y`):
//! OSWorld's linearized form with positions and sizes in the model's coordinate space,
//! capped, shown beside each screen.
//!
//! Every protocol renders its own conversation, so the tree does not go into it as text:
//! a marker does (`[[selfagent-a11y-NONCE-N]]`, the screenshot's [`Shot::tree`], which each
//! protocol puts beside the screen), and each request is expanded when it is sent — the last
//! `keep` trees in full, older ones as a short note — the way older screenshots are dropped.
//! That keeps a 50-step episode from carrying 50 trees, and works for every wire format
//! alike (the markers are plain strings wherever a protocol puts its text).
//!
//! [`Shot::tree`]: crate::model::protocol::Shot::tree

use crate::model::protocol::Geometry;
use crate::sandbox::a11y::Element;
use serde_json::Value;

/// About OSWorld's default budget for the tree (10,000 tokens).
pub const MAX_TREE_CHARS: usize = 40_000;

/// What stands in for a tree older than the last `keep`.
pub const OMITTED_TREE: &str = "[an earlier accessibility tree, omitted]";

const HEADER: &str = "tag\tname\ttext\tclass\tdescription\tposition (top-left x&y)\tsize (w&h)";

/// OSWorld's quoting of a text field: as is, or in double quotes with quotes doubled when
/// it holds one; `""` when empty.
fn quoted(text: &str) -> String {
    if text.is_empty() {
        "\"\"".into()
    } else if text.contains('"') {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

/// The elements in OSWorld's linearized form, positions and sizes in the model's space
/// (elements whose position does not map are left out), cut at `max` characters.
pub fn render(elements: &[Element], geometry: &Geometry, max: usize) -> String {
    let mut out = String::from(HEADER);
    for e in elements {
        let (Some([x, y]), Some([w, h])) = (e.position, e.size) else {
            continue;
        };
        let point = |px: i64, py: i64| -> Option<(i64, i64)> {
            let p = crate::action::Point {
                x: i32::try_from(px).ok()?,
                y: i32::try_from(py).ok()?,
            };
            let (mx, my) = geometry.to_model(p);
            Some((mx.round() as i64, my.round() as i64))
        };
        let (Some((mx, my)), Some((ex, ey))) = (point(x, y), point(x + w, y + h)) else {
            continue;
        };
        let line = format!(
            "\n{}\t{}\t{}\t{}\t{}\t({mx}, {my})\t({}, {})",
            e.tag,
            e.name,
            quoted(&e.text),
            e.class,
            e.description,
            ex - mx,
            ey - my
        );
        if out.len() + line.len() > max {
            out.push_str(&format!(
                "\n[the tree was cut at {max} characters: {} more elements]",
                elements.len()
            ));
            break;
        }
        out.push_str(&line);
    }
    out
}

/// The trees of an episode, in the order they were observed.
///
/// What is on the screen is the agent's to write, and a tree holds its text: a marker must
/// be one the screen cannot forge (a random nonce per episode, never shown to the model),
/// and expanding must not scan what it inserted (one pass), or a tree holding markers
/// would be expanded into trees holding markers, each level multiplying the request.
#[derive(Debug)]
pub struct Trees {
    trees: Vec<String>,
    nonce: String,
    marker: regex::Regex,
}

impl Default for Trees {
    fn default() -> Self {
        let nonce = crate::text::random_hex(8);
        let marker = regex::Regex::new(&format!(r"\[\[selfagent-a11y-{nonce}-(\d+)\]\]"))
            .unwrap_or_else(|_| unreachable!("a fixed pattern around hex digits"));
        Self {
            trees: Vec::new(),
            nonce,
            marker,
        }
    }
}

impl Trees {
    /// Keeps `tree`; returns the marker to put in the text beside its screenshot.
    pub fn add(&mut self, tree: String) -> String {
        self.trees.push(tree);
        format!("[[selfagent-a11y-{}-{}]]", self.nonce, self.trees.len())
    }

    /// `body` with each marker replaced: the last `keep` trees in full, older ones by
    /// [`OMITTED_TREE`].
    pub fn expand(&self, body: &mut Value, keep: usize) {
        if self.trees.is_empty() {
            return;
        }
        let recent = self.trees.len().saturating_sub(keep.max(1));
        let replace = |s: &str| -> Option<String> {
            if !self.marker.is_match(s) {
                return None;
            }
            let out = self.marker.replace_all(s, |c: &regex::Captures| {
                let n: usize = c[1].parse().unwrap_or(0);
                match self.trees.get(n.wrapping_sub(1)) {
                    Some(tree) if n > recent => format!(
                        "The screen's accessibility tree (OSWorld's linearized form; \
                         positions and sizes in your coordinates):\n{tree}"
                    ),
                    Some(_) => OMITTED_TREE.to_owned(),
                    None => String::new(),
                }
            });
            Some(out.into_owned())
        };
        walk(body, &replace);
    }
}

fn walk(v: &mut Value, replace: &dyn Fn(&str) -> Option<String>) {
    match v {
        Value::String(s) => {
            if let Some(new) = replace(s) {
                *s = new;
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| walk(x, replace)),
        Value::Object(o) => o.values_mut().for_each(|x| walk(x, replace)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::protocol::CoordSpace;
    use serde_json::json;

    fn el(tag: &str, name: &str, text: &str, at: [i64; 2], size: [i64; 2]) -> Element {
        Element {
            tag: tag.into(),
            name: name.into(),
            text: text.into(),
            class: String::new(),
            description: String::new(),
            position: Some(at),
            size: Some(size),
        }
    }

    #[test]
    fn positions_are_in_the_models_space_and_old_trees_are_dropped() {
        // A 1920x1080 screen the model sees at 1280x720: two thirds.
        let g = Geometry::pixels((1920, 1080), (1280, 720), CoordSpace::Native);
        let tree = render(
            &[
                el("menu", "File", "", [30, 60], [90, 30]),
                el("text", "", "say \"hi\"", [300, 300], [600, 300]),
            ],
            &g,
            MAX_TREE_CHARS,
        );
        let lines: Vec<&str> = tree.lines().collect();
        assert_eq!(lines[0], HEADER);
        assert_eq!(lines[1], "menu\tFile\t\"\"\t\t\t(20, 40)\t(60, 20)");
        assert_eq!(
            lines[2],
            "text\t\t\"say \"\"hi\"\"\"\t\t\t(200, 200)\t(400, 200)"
        );
        let many: Vec<Element> = (0..5000)
            .map(|i| el("label", &format!("item {i}"), "", [i, 0], [10, 10]))
            .collect();
        let cut = render(&many, &g, 1000);
        assert!(
            cut.len() < 1200 && cut.contains("cut at 1000 characters"),
            "{cut}"
        );

        let mut trees = Trees::default();
        let m1 = trees.add("tree one".into());
        let m2 = trees.add("tree two".into());
        let mut body = json!({"messages": [
            {"content": [{"type": "text", "text": format!("Do it.\n{m1}")}]},
            {"content": format!("The screen after your actions:\n{m2}")}
        ]});
        trees.expand(&mut body, 1);
        let text = body.to_string();
        assert!(
            text.contains(OMITTED_TREE) && !text.contains("tree one"),
            "{text}"
        );
        assert!(
            text.contains("tree two") && !text.contains("[[selfagent"),
            "{text}"
        );

        // A tree holding markers (the screen shows what the agent typed) is inserted as it
        // is: never expanded again; a marker without this episode's nonce is only text.
        let mut trees = Trees::default();
        let later = format!("[[selfagent-a11y-{}-2]]", trees.nonce);
        let forged = "[[selfagent-a11y-2]] [[selfagent-a11y-00000000-2]]";
        let m1 = trees.add(format!("{forged} {}", later.repeat(100)));
        let m2 = trees.add("tree two".into());
        let mut body = json!({"text": format!("{m1}{m2}")});
        trees.expand(&mut body, 2);
        let text = body["text"].as_str().unwrap();
        assert_eq!(text.matches("tree two").count(), 1, "{}", &text[..300]);
        assert_eq!(text.matches(later.as_str()).count(), 100);
        assert_eq!(text.matches(forged).count(), 1);
    }
}
