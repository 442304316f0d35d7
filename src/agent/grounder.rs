//! The grounder of a planner (`--grounder`): asks a grounding model where an element is on
//! the screen, in the model's own prompt, answer format and coordinate space
//! (`model::protocol::grounding`), and gives back the point in screen pixels with what was
//! said, for the recording.

use crate::action::Point;
use crate::model::price::Priced;
use crate::model::protocol::CoordSpace;
use crate::model::protocol::grounding::{self, Dialect};
use crate::model::{HttpModel, Model, Usage};
use serde_json::Value;
use std::sync::Arc;
use std::time::Instant;

/// A grounding model and how to talk to it.
#[derive(Clone)]
pub struct Grounder {
    pub model: Arc<HttpModel>,
    pub dialect: &'static dyn Dialect,
    pub space: CoordSpace,
    /// Its price, when known (its tokens cost apart from the planner's).
    pub price: Option<Priced>,
}

impl std::fmt::Debug for Grounder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grounder")
            .field("model", &self.model.config().model)
            .field("dialect", &self.dialect.name())
            .field("space", &self.space)
            .finish()
    }
}

/// One element found (or not): the point, and the exchange as recorded.
#[derive(Debug, Clone)]
pub struct Located {
    pub point: Result<Point, String>,
    /// The request without pixels (the screenshot as a frame reference).
    pub request: Value,
    pub response: Value,
    pub usage: Usage,
    pub model_ms: f64,
}

impl Grounder {
    pub fn name(&self) -> &str {
        &self.model.config().model
    }

    /// Finds `element` on the screen (`png`, `screen` pixels, frame `sha256`).
    pub async fn locate(
        &self,
        element: &str,
        png: &Arc<Vec<u8>>,
        screen: (u32, u32),
        sha256: &str,
    ) -> Located {
        let started = Instant::now();
        let geometry = grounding::geometry(self.space, screen);
        let image = if geometry.sent == screen {
            Ok(png.as_ref().clone())
        } else {
            let (g, png) = (geometry, png.clone());
            tokio::task::spawn_blocking(move || g.image_for_model(&png))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r)
        };
        let request = match image {
            Ok(image) => grounding::request(self.dialect, element, &image, &geometry),
            Err(e) => {
                return Located {
                    point: Err(format!("scaling the screenshot for the grounder: {e}")),
                    request: Value::Null,
                    response: Value::Null,
                    usage: Usage::default(),
                    model_ms: 0.0,
                };
            }
        };
        // The recording keeps the frame's id, not its pixels.
        let mut recorded = request.body.clone();
        if let Some(parts) = recorded["messages"][0]["content"].as_array_mut() {
            for p in parts.iter_mut() {
                if p["type"] == "image_url" {
                    p["image_url"]["url"] = Value::String(format!("sha256:{sha256}"));
                }
            }
        }
        recorded["model"] = Value::String(self.name().to_owned());
        let dialect = self.dialect;
        let check = move |raw: &Value| grounding::point(dialect, raw, &geometry).map(|_| ());
        let reply = self.model.send(&request, &check, &|_| {}).await;
        let model_ms = started.elapsed().as_secs_f64() * 1000.0;
        match reply {
            Ok(raw) => {
                let parsed = crate::model::protocol::parse_chat(&raw.body).ok();
                Located {
                    point: grounding::point(dialect, &raw.body, &geometry),
                    request: recorded,
                    usage: parsed.map(|p| p.usage).unwrap_or_default(),
                    response: raw.body,
                    model_ms,
                }
            }
            Err(e) => Located {
                point: Err(format!("the grounder {}: {e}", self.name())),
                request: recorded,
                response: Value::Null,
                usage: Usage::default(),
                model_ms,
            },
        }
    }
}
