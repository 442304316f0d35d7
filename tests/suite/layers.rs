//! The crate's layers hold: no dependency cycle among the top-level modules of `src/`,
//! counting every `crate::module` path in non-test code (docs/ARCHITECTURE.md, "Layers").
//! A lower layer that names a higher one fails here, with the path that does it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The top-level modules: `src/x.rs` and `src/x/`.
fn modules() -> BTreeSet<String> {
    std::fs::read_dir(src())
        .unwrap()
        .filter_map(|e| {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            if e.path().is_dir() {
                Some(name)
            } else {
                name.strip_suffix(".rs")
                    .filter(|n| *n != "main" && *n != "lib")
                    .map(str::to_owned)
            }
        })
        .collect()
}

/// The module's non-test files.
fn files(module: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    let file = src().join(format!("{module}.rs"));
    if file.exists() {
        out.push(file);
    }
    let dir = src().join(module);
    if dir.is_dir() {
        walk(&dir, &mut out);
    }
    // Test files: `<topic>_tests.rs` (docs/STYLE.md).
    out.retain(|p| {
        !p.file_name()
            .unwrap()
            .to_string_lossy()
            .ends_with("_tests.rs")
    });
    out
}

/// The text without `#[cfg(test)]` items (a module or a function, to its closing brace).
fn without_tests(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.trim() != "#[cfg(test)]" {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        // Skip the next item: a `mod x;` line, or everything to its matching brace.
        let mut depth = 0i64;
        let mut opened = false;
        for next in lines.by_ref() {
            depth += next.matches('{').count() as i64 - next.matches('}').count() as i64;
            opened |= next.contains('{');
            if (opened && depth <= 0) || (!opened && next.trim_end().ends_with(';')) {
                break;
            }
        }
    }
    out
}

/// module → (module it names → a file that names it).
fn graph() -> BTreeMap<String, BTreeMap<String, String>> {
    let mods = modules();
    let mut g: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for m in &mods {
        let edges = g.entry(m.clone()).or_default();
        for f in files(m) {
            let text = without_tests(&std::fs::read_to_string(&f).unwrap());
            for (i, _) in text.match_indices("crate::") {
                let target: String = text[i + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if &target != m && mods.contains(&target) {
                    edges
                        .entry(target)
                        .or_insert_with(|| f.strip_prefix(src()).unwrap().display().to_string());
                }
            }
        }
    }
    g
}

/// A cycle through `start`, if there is one: the modules in order.
fn cycle_from(g: &BTreeMap<String, BTreeMap<String, String>>, start: &str) -> Option<Vec<String>> {
    let mut stack = vec![(start.to_owned(), vec![start.to_owned()])];
    let mut seen = BTreeSet::new();
    while let Some((m, path)) = stack.pop() {
        for next in g.get(&m).into_iter().flat_map(|e| e.keys()) {
            if next == start {
                let mut p = path;
                p.push(start.to_owned());
                return Some(p);
            }
            if seen.insert(next.clone()) {
                let mut p = path.clone();
                p.push(next.clone());
                stack.push((next.clone(), p));
            }
        }
    }
    None
}

#[test]
fn the_top_level_modules_form_no_cycle() {
    let g = graph();
    assert!(g.len() > 20, "the modules were not found: {:?}", g.keys());
    let cycles: Vec<String> = g
        .keys()
        .filter_map(|m| cycle_from(&g, m))
        .map(|c| {
            let steps: Vec<String> = c
                .windows(2)
                .map(|w| format!("{} → {} ({})", w[0], w[1], g[&w[0]][&w[1]]))
                .collect();
            steps.join(", ")
        })
        .collect();
    assert!(
        cycles.is_empty(),
        "the layers have a cycle (a lower module names a higher one; see docs/ARCHITECTURE.md):\n{}",
        cycles.join("\n")
    );
}

/// The check finds a cycle when there is one (so its silence means something).
#[test]
fn the_cycle_check_sees_a_cycle() {
    let mut g = graph();
    g.get_mut("sandbox")
        .unwrap()
        .insert("episode".into(), "planted".into());
    assert!(cycle_from(&g, "sandbox").is_some());
    assert!(without_tests("a\n#[cfg(test)]\nmod t {\n crate::x;\n}\nb\n").contains('b'));
    assert!(!without_tests("#[cfg(test)]\nmod t {\n crate::x;\n}\n").contains("crate::x"));
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(rust_files(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out
}

/// The provider seam holds: only `src/sandbox/docker/` names the Docker API (docs/
/// ARCHITECTURE.md, "The provider seam").
#[test]
fn only_the_docker_provider_names_bollard() {
    let docker = src().join("sandbox").join("docker");
    let mut inside = 0;
    let leaks: Vec<String> = rust_files(&src())
        .into_iter()
        .filter(|f| {
            let names = std::fs::read_to_string(f).unwrap().contains("bollard");
            if f.starts_with(&docker) {
                inside += usize::from(names);
                return false;
            }
            names
        })
        .map(|f| f.strip_prefix(src()).unwrap().display().to_string())
        .collect();
    assert!(
        inside > 0,
        "the Docker provider was not found (so this check would see nothing)"
    );
    assert!(
        leaks.is_empty(),
        "bollard is named outside src/sandbox/docker/: {leaks:?}"
    );
}

/// Unit-test files follow one naming rule: `<topic>_tests.rs` (docs/STYLE.md).
#[test]
fn unit_test_files_are_named_topic_tests() {
    let odd: Vec<String> = rust_files(&src())
        .into_iter()
        .map(|f| f.strip_prefix(src()).unwrap().display().to_string())
        .filter(|f| {
            let name = f.rsplit('/').next().unwrap();
            (name.contains("test") && !name.ends_with("_tests.rs")) || name == "tests.rs"
        })
        .collect();
    assert!(odd.is_empty(), "test files named otherwise: {odd:?}");
}
