//! What the loop needs of a desktop: look, act, wait for the screen to settle. [`Desktop`]
//! is the real one; tests run the loop against a fake screen (no Docker) through the same
//! trait.

use crate::action::Action;
use crate::desktop::{
    ActionError, ActionOutput, Desktop, DesktopError, Mark, Screenshot, SettleOptions, SettleReport,
};
use std::future::Future;

pub trait Computer: Send + Sync {
    /// The screen's size in pixels.
    fn size(&self) -> (u32, u32);

    /// A PNG of the screen as it is now.
    fn screenshot(&self) -> impl Future<Output = Result<Screenshot, DesktopError>> + Send;

    /// Where settling starts from: taken just before an action.
    fn mark(&self) -> Mark;

    /// Performs one action (in screen pixels).
    fn act(
        &self,
        action: &Action,
    ) -> impl Future<Output = Result<ActionOutput, ActionError>> + Send;

    /// Waits until the screen has been quiet for a moment after `since`.
    fn settle(&self, since: Mark, opts: SettleOptions)
    -> impl Future<Output = SettleReport> + Send;

    /// Lets go of keys and buttons an interrupted action left down.
    fn release_input(&self) -> impl Future<Output = ()> + Send;

    /// Why the desktop can no longer be used (it exited, its display server stopped), when
    /// that is so; `None` while it lives.
    fn why_gone(&self) -> impl Future<Output = Option<String>> + Send;

    /// Resolves when the desktop stops working (so a long action does not outlive it).
    fn gone(&self) -> impl Future<Output = ()> + Send;

    /// The real desktop behind it, for what only a desktop can do (record a person's
    /// take-over through a proxy); `None` for stand-ins.
    fn desktop(&self) -> Option<&Desktop> {
        None
    }
}

impl Computer for Desktop {
    fn size(&self) -> (u32, u32) {
        Desktop::size(self)
    }

    fn desktop(&self) -> Option<&Desktop> {
        Some(self)
    }

    async fn screenshot(&self) -> Result<Screenshot, DesktopError> {
        Desktop::screenshot(self).await
    }

    fn mark(&self) -> Mark {
        Desktop::mark(self)
    }

    async fn act(&self, action: &Action) -> Result<ActionOutput, ActionError> {
        Desktop::act(self, action).await
    }

    async fn settle(&self, since: Mark, opts: SettleOptions) -> SettleReport {
        Desktop::settle(self, since, opts).await
    }

    async fn release_input(&self) {
        Desktop::release_input(self).await;
    }

    async fn why_gone(&self) -> Option<String> {
        self.sandbox().why_gone().await
    }

    async fn gone(&self) {
        Desktop::gone(self).await;
    }
}
