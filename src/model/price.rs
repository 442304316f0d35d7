//! What an episode costs: tokens times the model's price. Prices come from the config
//! file's `[prices]` (per model id, in dollars per million tokens) over a table of the
//! public APIs' list prices, dated: providers change them, so the table says when it was
//! read, and a price from the config always wins.
//!
//! ```toml
//! [prices."my-vllm-model"]
//! input = 0.0
//! output = 0.0
//! [prices."claude-sonnet-4-5"]
//! input = 3.0
//! output = 15.0
//! ```

use serde::{Deserialize, Serialize};

/// When the built-in list prices were read from the providers' pricing pages.
pub const LIST_PRICES_DATED: &str = "2025-11";

/// Dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Price {
    pub input: f64,
    pub output: f64,
}

impl Price {
    /// The cost of these tokens, in dollars.
    pub fn cost(&self, tokens_in: u64, tokens_out: u64) -> f64 {
        (tokens_in as f64 * self.input + tokens_out as f64 * self.output) / 1e6
    }
}

/// A model's price and where it came from, as recorded with the session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Priced {
    #[serde(flatten)]
    pub price: Price,
    /// `config` or `list prices 2025-11`.
    pub source: String,
}

/// The list prices of public computer-use models (input, output; $/M tokens), matched by
/// the longest id prefix, so dated ids (`claude-sonnet-4-5-20250929`) find theirs.
const LIST: &[(&str, f64, f64)] = &[
    ("claude-opus-4-5", 5.0, 25.0),
    ("claude-opus-4-1", 15.0, 75.0),
    ("claude-opus-4", 15.0, 75.0),
    ("claude-sonnet-4-5", 3.0, 15.0),
    ("claude-sonnet-4", 3.0, 15.0),
    ("claude-3-7-sonnet", 3.0, 15.0),
    ("claude-haiku-4-5", 1.0, 5.0),
    ("computer-use-preview", 3.0, 12.0),
    ("gpt-5", 1.25, 10.0),
    ("gpt-5-mini", 0.25, 2.0),
    ("gpt-4.1", 2.0, 8.0),
    ("gpt-4.1-mini", 0.4, 1.6),
    ("gpt-4o", 2.5, 10.0),
    ("gpt-4o-mini", 0.15, 0.6),
];

/// The price of `model`: the config's entry for it (exact id, then the longest prefix),
/// else the list price, else none.
pub fn lookup(model: &str, configured: &[(String, Price)]) -> Option<Priced> {
    let base = model.rsplit('/').next().unwrap_or(model);
    let longest = |keys: &mut dyn Iterator<Item = (&str, Price)>| {
        keys.filter(|(k, _)| model == *k || base.starts_with(k))
            .max_by_key(|(k, _)| k.len())
            .map(|(_, p)| p)
    };
    if let Some(price) = longest(&mut configured.iter().map(|(k, p)| (k.as_str(), *p))) {
        return Some(Priced {
            price,
            source: "config".into(),
        });
    }
    longest(&mut LIST.iter().map(|(k, i, o)| {
        (
            *k,
            Price {
                input: *i,
                output: *o,
            },
        )
    }))
    .map(|price| Priced {
        price,
        source: format!("list prices {LIST_PRICES_DATED}"),
    })
}

/// Dollars for people: "$0.42", "$0.0031", "$12.30".
pub fn dollars(x: f64) -> String {
    let text = if x >= 1.0 || x == 0.0 {
        return format!("${x:.2}");
    } else if x >= 0.01 {
        format!("{x:.3}")
    } else {
        format!("{x:.4}")
    };
    // Cents always, more digits only where they say something: $0.50, $0.005.
    let trimmed = text.trim_end_matches('0');
    let decimals = trimmed.split_once('.').map_or(0, |(_, d)| d.len());
    format!("${trimmed}{}", "0".repeat(2usize.saturating_sub(decimals)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_prefix_wins_and_the_config_beats_the_list() {
        let p = lookup("claude-sonnet-4-5-20250929", &[]).unwrap();
        assert_eq!(p.price.input, 3.0);
        assert!(p.source.starts_with("list prices"));
        assert_eq!(
            lookup("gpt-4o-mini-2024-07-18", &[]).unwrap().price.input,
            0.15
        );
        assert_eq!(lookup("gpt-4o-2024-11-20", &[]).unwrap().price.input, 2.5);
        assert!(lookup("ByteDance-Seed/UI-TARS-1.5-7B", &[]).is_none());
        let mine = vec![(
            "gpt-4o".to_owned(),
            Price {
                input: 1.0,
                output: 2.0,
            },
        )];
        let p = lookup("gpt-4o-2024-11-20", &mine).unwrap();
        assert_eq!((p.price.input, p.source.as_str()), (1.0, "config"));
        let cost = p.price.cost(1_000_000, 500_000);
        assert!((cost - 2.0).abs() < 1e-9, "{cost}");
    }

    #[test]
    fn dollars_read_well() {
        assert_eq!(dollars(0.0), "$0.00");
        assert_eq!(dollars(0.00312), "$0.0031");
        assert_eq!(dollars(0.4213), "$0.421");
        assert_eq!(dollars(12.3), "$12.30");
        assert_eq!(dollars(0.5), "$0.50");
        assert_eq!(dollars(0.005), "$0.005");
    }
}
