//! Every protocol's decoder against 10,000 generated and mutated replies each: it never
//! panics, and every reply or action it cannot use comes with a reason for the model.
//! Seeded, so a failure reproduces.

use super::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

const ROUNDS: usize = 10_000;

/// Pieces models' replies are made of, to splice in.
const PIECES: &[&str] = &[
    "(",
    ")",
    "'",
    "\"",
    "\\",
    "\\n",
    "\n",
    "\n\n",
    ",",
    "=",
    "[",
    "]",
    "{",
    "}",
    "<",
    ">",
    "```",
    "```python\n",
    "<|box_start|>",
    "<|box_end|>",
    "<point>",
    "</point>",
    "<bbox>",
    "<tool_call>",
    "</tool_call>",
    "Action:",
    "Thought:",
    "## Code:",
    "pyautogui.",
    "computer.",
    "click",
    "type",
    "hotkey",
    "scroll",
    "finished",
    "call_user",
    "start_box=",
    "x=",
    "-",
    ".",
    "e9",
    "1e400",
    "NaN",
    "-1",
    "999999999999",
    "0.5",
    "é",
    "日本",
    "\u{0}",
    "\u{202e}",
    "None",
    "True",
    ";",
    "#",
    "'''",
    "r'",
    "DONE",
    "WAIT",
    "FAIL",
];

fn mutate(rng: &mut StdRng, s: &str) -> String {
    let mut chars: Vec<char> = s.chars().collect();
    for _ in 0..rng.random_range(1..6) {
        let at = rng.random_range(0..=chars.len());
        match rng.random_range(0..5) {
            0 => {
                let piece = PIECES[rng.random_range(0..PIECES.len())];
                chars.splice(at..at, piece.chars());
            }
            1 if !chars.is_empty() => {
                let end = (at + rng.random_range(1..8)).min(chars.len());
                chars.drain(at.min(end)..end);
            }
            2 => chars.truncate(at),
            3 if at < chars.len() => chars[at] = char::from(rng.random_range(32u8..127)),
            _ => {
                let n = rng.random_range(0..3);
                let copy: Vec<char> = chars[at.saturating_sub(n)..at].to_vec();
                chars.splice(at..at, copy);
            }
        }
    }
    chars.into_iter().collect()
}

/// A random JSON value, a few levels deep.
fn random_value(rng: &mut StdRng, depth: u32) -> Value {
    match rng.random_range(0..if depth > 2 { 5 } else { 8 }) {
        0 => Value::Null,
        1 => json!(rng.random_bool(0.5)),
        2 => json!(rng.random_range(-5000.0..5000.0f64)),
        3 => json!(rng.random_range(-3i64..3000)),
        4 => json!(PIECES[rng.random_range(0..PIECES.len())]),
        5 => Value::Array(
            (0..rng.random_range(0..4))
                .map(|_| random_value(rng, depth + 1))
                .collect(),
        ),
        _ => {
            let keys = [
                "action",
                "type",
                "coordinate",
                "text",
                "keys",
                "x",
                "y",
                "input",
                "name",
                "content",
                "actions",
                "call_id",
                "region",
                "scroll_amount",
                "pixels",
                "status",
            ];
            Value::Object(
                (0..rng.random_range(0..5))
                    .map(|_| {
                        (
                            keys[rng.random_range(0..keys.len())].to_owned(),
                            random_value(rng, depth + 1),
                        )
                    })
                    .collect(),
            )
        }
    }
}

/// Replaces a random value inside `v` by a random one.
fn mutate_json(rng: &mut StdRng, v: &mut Value) {
    match v {
        Value::Object(map) if !map.is_empty() && rng.random_bool(0.7) => {
            let i = rng.random_range(0..map.len());
            let key = map.keys().nth(i).cloned().unwrap_or_default();
            if let Some(inner) = map.get_mut(&key) {
                mutate_json(rng, inner);
            }
        }
        Value::Array(items) if !items.is_empty() && rng.random_bool(0.7) => {
            let i = rng.random_range(0..items.len());
            mutate_json(rng, &mut items[i]);
        }
        _ => *v = random_value(rng, 0),
    }
}

fn check(name: &str, p: &dyn Protocol, raw: &Value) {
    match p.decode(raw) {
        Err(e) => assert!(
            !e.to_string().trim().is_empty(),
            "{name}: an empty error for {raw}"
        ),
        Ok(d) => {
            for c in &d.calls {
                if let Err(e) = &c.action {
                    assert!(
                        !e.to_string().trim().is_empty(),
                        "{name}: no reason for {raw}"
                    );
                }
            }
        }
    }
}

fn named(name: &str) -> ProtocolName {
    name.parse().unwrap()
}

fn protocol(name: ProtocolName, space: CoordSpace, model: &str) -> Box<dyn Protocol> {
    let cfg = ProtocolConfig {
        name,
        space,
        model: model.into(),
        ..ProtocolConfig::default()
    };
    create(&cfg, (1280, 800)).unwrap()
}

use crate::model::protocol::chat::text_reply as chat;

#[test]
fn text_protocols_survive_mutated_replies() {
    let mut rng = StdRng::seed_from_u64(0x5e1f_a9e7);
    let cases: Vec<(ProtocolName, CoordSpace, &str)> = vec![
        (
            named("uitars"),
            CoordSpace::Smart,
            "Thought: 我看到Preferences窗口\nAction: click(start_box='(177,549)')\n\ntype(content='doubao.com\\n')\n\nhotkey(key='ctrl v')",
        ),
        (
            named("uitars"),
            CoordSpace::Thousand,
            "<think>\nok\n</think>\nThought: t\nAction: drag(start_point='<point>10 20</point>', end_point='<point>300 400</point>')\n\nscroll(point='<point>510 150</point>', direction='down')\n\nfinished(content='it\\'s done')",
        ),
        (
            named("qwen"),
            CoordSpace::Thousand,
            "Action: Click.\n<tool_call>\n{\"name\": \"computer_use\", \"arguments\": {\"action\": \"left_click\", \"coordinate\": [500, 382]}}\n</tool_call>",
        ),
        (
            named("opencua"),
            CoordSpace::Smart,
            "## Thought:\nx\n## Action:\ny\n## Code:\n```python\npyautogui.click(x=1443, y=343)\npyautogui.write('a;b')\ncomputer.terminate(status=\"success\", answer='''done''')\n```",
        ),
        (
            named("qwen"),
            CoordSpace::Thousand,
            "<tool_call>\n<function=computer>\n<parameter=action>\nleft_click\n</parameter>\n<parameter=coordinate>\n[512, 300]\n</parameter>\n<parameter=text>\nctrl\n</parameter>\n</function>\n</tool_call>",
        ),
        (
            named("fara"),
            CoordSpace::Smart,
            "I type it.\n<tool_call>\n{\"name\": \"computer_use\", \"arguments\": {\"action\": \"type\", \"text\": \"a;b\", \"coordinate\": [10, 20], \"press_enter\": true, \"delete_existing_text\": false}}\n</tool_call>",
        ),
        (
            named("glm"),
            CoordSpace::NineNineNine,
            "I drag it.\n<|begin_of_box|>left_drag(start_box='[10,20]', end_box='[300,400]', element_info='x')<|end_of_box|>\nMemory:\n[{\"k\": \"v\"}]",
        ),
        (
            named("pyautogui"),
            CoordSpace::Native,
            "Reflect.\n```python\nimport pyautogui\npyautogui.hotkey('ctrl', 'alt', 't'); time.sleep(0.5)\npyautogui.dragTo(300, 400, button='left')\n```",
        ),
    ];
    for (name, space, base) in cases {
        let p = protocol(name, space, "");
        check(name.as_str(), p.as_ref(), &chat(base));
        for _ in 0..ROUNDS {
            let text = mutate(&mut rng, base);
            check(name.as_str(), p.as_ref(), &chat(&text));
        }
    }
}

#[test]
fn json_protocols_survive_generated_and_mutated_replies() {
    let mut rng = StdRng::seed_from_u64(0x0a11_7001);
    let cases: Vec<(ProtocolName, &str, Value)> = vec![
        (
            named("tools"),
            "",
            json!({"choices": [{"message": {"content": "x", "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "computer", "arguments": "{\"action\":\"left_click\",\"coordinate\":[1,2]}"}},
            {"id": "b", "function": {"name": "computer", "arguments": {"action": "scroll", "coordinate": [5, 5], "scroll_direction": "down", "scroll_amount": 3}}}]}}]}),
        ),
        (
            named("qwen"),
            "",
            json!({"choices": [{"message": {"content": "Action: x", "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "computer_use", "arguments": "{\"action\": \"key\", \"keys\": [\"ctrl\", \"c\"]}"}}]}}]}),
        ),
        (
            named("anthropic"),
            "claude-opus-4-6",
            json!({"content": [
            {"type": "thinking", "thinking": "t", "signature": "s"},
            {"type": "text", "text": "I'll click."},
            {"type": "tool_use", "id": "t1", "name": "computer", "input": {"action": "left_click", "coordinate": [640, 400]}},
            {"type": "tool_use", "id": "t2", "name": "computer", "input": {"action": "zoom", "region": [0, 0, 100, 100]}}],
            "stop_reason": "tool_use", "usage": {"input_tokens": 1, "output_tokens": 1}}),
        ),
        (
            named("anthropic"),
            "claude-sonnet-5-5",
            json!({"content": [
            {"type": "text", "text": "I'll type and zoom."},
            {"type": "tool_use", "id": "t1", "name": "key", "toolset_name": "computer", "input": {"text": "ctrl+a", "repeat": 3}},
            {"type": "tool_use", "id": "t2", "name": "zoom", "toolset_name": "computer", "input": {"region": [0, 0, 100, 100]}},
            {"type": "tool_use", "id": "t3", "name": "left_click_drag", "toolset_name": "computer", "input": {"start_coordinate": [1, 1], "coordinate": [9, 9]}}],
            "stop_reason": "tool_use", "usage": {"input_tokens": 1, "output_tokens": 1}}),
        ),
        (
            named("gemini"),
            "gemini-3.5-flash",
            json!({"candidates": [{"content": {"role": "model", "parts": [
            {"text": "t", "thought": true},
            {"functionCall": {"name": "type_text_at", "args": {"x": 10, "y": 20, "text": "hi", "press_enter": true}}},
            {"functionCall": {"name": "scroll", "args": {"x": 500, "y": 500, "direction": "down", "magnitude_in_pixels": 300,
              "safety_decision": {"decision": "require_confirmation", "explanation": "e"}}}}]},
            "finishReason": "STOP"}], "usageMetadata": {"promptTokenCount": 1}}),
        ),
        (
            named("openai"),
            "gpt-5.4",
            json!({"id": "r", "output": [
            {"type": "reasoning", "summary": [{"type": "summary_text", "text": "t"}]},
            {"type": "computer_call", "call_id": "c", "actions": [
                {"type": "click", "button": "left", "x": 1, "y": 2},
                {"type": "drag", "path": [{"x": 1, "y": 1}, {"x": 9, "y": 9}]},
                {"type": "keypress", "keys": ["CTRL", "A"]}],
             "pending_safety_checks": [{"id": "s", "code": "c", "message": "m"}]}]}),
        ),
    ];
    for (name, model, base) in cases {
        let space = if name.as_str() == "gemini" {
            CoordSpace::Thousand
        } else {
            CoordSpace::Native
        };
        let p = protocol(name, space, model);
        check(name.as_str(), p.as_ref(), &base);
        for _ in 0..ROUNDS {
            let mut v = base.clone();
            for _ in 0..rng.random_range(1..4) {
                mutate_json(&mut rng, &mut v);
            }
            check(name.as_str(), p.as_ref(), &v);
        }
        // And values made up from nothing.
        for _ in 0..ROUNDS / 10 {
            check(name.as_str(), p.as_ref(), &random_value(&mut rng, 0));
        }
    }
}

/// Every protocol's own typical reply, mutated: a new protocol is fuzzed from the day it is
/// listed.
#[test]
fn every_protocols_example_survives_mutation() {
    let mut rng = StdRng::seed_from_u64(0xe8a3_9012);
    for name in ProtocolName::all() {
        let example = name.spec().example();
        let cfg = ProtocolConfig::for_model(name, example.model);
        let p = create(&cfg, (1280, 800)).unwrap();
        let d = p.decode(&example.reply).unwrap();
        assert!(
            d.calls.len() == 1 && d.calls[0].action.is_ok(),
            "{name}: the example is one usable click: {:?}",
            d.calls
        );
        for _ in 0..ROUNDS / 4 {
            let mut v = example.reply.clone();
            for _ in 0..rng.random_range(1..4) {
                mutate_json(&mut rng, &mut v);
            }
            check(name.as_str(), p.as_ref(), &v);
            if let Some(text) = example.reply["choices"][0]["message"]["content"].as_str() {
                check(name.as_str(), p.as_ref(), &chat(&mutate(&mut rng, text)));
            }
        }
    }
}
