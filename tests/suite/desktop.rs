//! The desktop driven over VNC, checked from inside the container.

use crate::common::wait::{check, eventually};
use crate::common::{self, TestDesktop, decode_png, desktop, desktop_with, test_spec};
use pretty_assertions::assert_eq;
use selfagent::action::{Action, Button, Point};
use selfagent::desktop::{ActionError, DesktopError, SettleOptions, WindowMatch};
use selfagent::sandbox::SandboxSpec;
use std::time::{Duration, Instant};

fn click(x: i32, y: i32, button: Button, count: u8) -> Action {
    Action::Click {
        coordinate: Some(Point::new(x, y)),
        button,
        count,
        modifiers: vec![],
    }
}

fn typed(text: &str) -> Action {
    Action::Type { text: text.into() }
}

fn key(text: &str) -> Action {
    Action::Key { text: text.into() }
}

#[tokio::test]
async fn screenshot_is_a_png_of_the_configured_size_that_changes_after_an_action() {
    let d = desktop_with(SandboxSpec {
        width: 1024,
        height: 768,
        ..test_spec()
    })
    .await;
    assert_eq!(d.size(), (1024, 768));
    let drawn = d.wait_drawn(Duration::from_secs(10)).await.unwrap();
    assert!(drawn.quiet && drawn.changes > 0, "{drawn:?}");
    let before = d.screenshot().await.unwrap();
    let img = decode_png(&before.png);
    assert_eq!(img.dimensions(), (1024, 768));
    // The desktop is drawn: not a blank frame.
    let first = img.get_pixel(0, 0);
    assert!(
        img.pixels().any(|p| p != first),
        "the screenshot is one flat colour"
    );

    d.terminal("shot-test", None).await;
    let after = decode_png(&d.screenshot().await.unwrap().png);
    assert_eq!(after.dimensions(), (1024, 768));
    let changed = img
        .pixels()
        .zip(after.pixels())
        .filter(|(a, b)| a != b)
        .count();
    assert!(
        changed > 10_000,
        "only {changed} pixels changed after opening a terminal"
    );
}

#[tokio::test]
async fn a_click_moves_the_x_pointer_there() {
    let d = desktop().await;
    for (x, y, button) in [
        (123, 456, Button::Left),
        (900, 50, Button::Right),
        (5, 700, Button::Middle),
    ] {
        d.act_settled(click(x, y, button, 1)).await;
        let loc = d.sh("xdotool getmouselocation --shell").await;
        assert!(
            loc.contains(&format!("X={x}\n")) && loc.contains(&format!("Y={y}\n")),
            "{loc}"
        );
        // Dismiss whatever menu a right or middle click opened.
        d.act_settled(key("Escape")).await;
    }
    let out = d
        .act(&Action::MouseMove {
            coordinate: Point::new(640, 400),
        })
        .await
        .unwrap();
    assert!(out.text.is_none());
    let pos = d.act(&Action::CursorPosition).await.unwrap();
    assert_eq!(pos.cursor, Some(Point::new(640, 400)));
    // Back and forward (X buttons 8 and 9) go through XTEST and move the pointer too.
    d.act_settled(click(300, 300, Button::Back, 1)).await;
    assert_eq!(d.cursor_position().await.unwrap(), Point::new(300, 300));
}

#[tokio::test]
async fn typed_unicode_text_arrives_intact() {
    let d = desktop().await;
    d.terminal("unicode-test", Some("cat > /tmp/typed.txt"))
        .await;
    let text = "héllo wörld ✓ — naïve €5, ß, 日本語, Ελληνικά";
    d.act_settled(typed(text)).await;
    d.act_settled(key("Return")).await;
    d.act_settled(key("ctrl+d")).await;
    let got = d.wait_file("/tmp/typed.txt", Duration::from_secs(5)).await;
    assert_eq!(String::from_utf8(got).unwrap(), format!("{text}\n"));
}

#[tokio::test]
async fn key_combos_reach_the_application() {
    let d = desktop().await;
    d.terminal("combo-test", None).await;
    // Readline: ctrl+a jumps to the start of the line, where the missing `e` goes.
    d.act_settled(typed("cho combo > /tmp/combo.txt")).await;
    d.act_settled(key("ctrl+a")).await;
    d.act_settled(typed("e")).await;
    d.act_settled(key("Return")).await;
    let got = d.wait_file("/tmp/combo.txt", Duration::from_secs(5)).await;
    assert_eq!(String::from_utf8(got).unwrap(), "combo\n");
    // Several combos in one action, xdotool style; ctrl+u clears the line first.
    d.act_settled(typed("junk")).await;
    d.act_settled(key("ctrl+u")).await;
    d.act_settled(typed("echo two > /tmp/two.txt")).await;
    d.act_settled(key("End Return")).await;
    let got = d.wait_file("/tmp/two.txt", Duration::from_secs(5)).await;
    assert_eq!(String::from_utf8(got).unwrap(), "two\n");
}

#[tokio::test]
async fn scrolling_moves_the_view_and_back() {
    let d = desktop().await;
    let w = d
        .terminal(
            "scroll-test",
            Some("seq 1 3000; echo done > /tmp/seq-done; exec sleep 600"),
        )
        .await;
    let center = Point::new(w.x + w.width as i32 / 2, w.y + w.height as i32 / 2);
    // The text area, without the scrollbar and the cursor's line (its blink differs).
    let text_area = |png: &[u8]| {
        let img = decode_png(png);
        image::imageops::crop_imm(&img, w.x as u32, w.y as u32, w.width - 40, w.height / 2)
            .to_image()
    };
    let differing = |a: &image::RgbImage, b: &image::RgbImage| {
        a.pixels().zip(b.pixels()).filter(|(p, q)| p != q).count()
    };
    // The view to come back to is the one after all 3000 lines are drawn: once seq is
    // done, until the text area is the same on both sides of a quiet screen (a cold
    // machine's terminal draws that much output for a while).
    d.wait_file("/tmp/seq-done", Duration::from_secs(30)).await;
    let at_bottom = stable(&d, &text_area).await;
    let scroll = |dy| Action::Scroll {
        coordinate: Some(center),
        dx: 0,
        dy,
        modifiers: vec![],
    };
    d.act_changing(scroll(-10)).await;
    let scrolled = text_area(&d.screenshot().await.unwrap().png);
    // Lines 29xx scroll by: the text differs in a few hundred glyph pixels.
    assert!(
        differing(&at_bottom, &scrolled) > 100,
        "scrolling up changed nothing"
    );
    d.act_changing(scroll(10)).await;
    // However slowly the terminal catches up, it comes back to the bottom: the view stops
    // changing, and scrolling further down (past the end, so nothing to do) changes nothing.
    // (Compared with itself, not with `at_bottom`: on a cold machine the terminal may still
    // have been catching up with seq's output when that was taken.)
    let back = stable(&d, &text_area).await;
    assert!(
        differing(&scrolled, &back) > 100,
        "scrolling back down changed nothing"
    );
    d.act_settled(scroll(10)).await;
    let beyond = stable(&d, &text_area).await;
    assert_eq!(
        differing(&back, &beyond),
        0,
        "scrolling down did not come back to the bottom"
    );
}

/// The text area once it is the same on both sides of a quiet screen.
async fn stable(d: &TestDesktop, area: &impl Fn(&[u8]) -> image::RgbImage) -> image::RgbImage {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let a = area(&d.screenshot().await.unwrap().png);
        d.settle(d.mark(), SettleOptions::default()).await;
        let b = area(&d.screenshot().await.unwrap().png);
        if a == b {
            return b;
        }
        assert!(
            Instant::now() < deadline,
            "the terminal never stopped drawing"
        );
    }
}

#[tokio::test]
async fn dragging_a_title_bar_moves_the_window() {
    let d = desktop().await;
    let w = d.terminal("drag-test", None).await;
    // The title bar is just above the client area.
    let start = Point::new(w.x + w.width as i32 / 2, w.y - 10);
    let end = Point::new(start.x + 150, start.y + 100);
    // A window manager busy with a new window (a loaded machine) may take the press for a
    // click and not move at all: as a person, and the agent's next step, would, drag again
    // then. A move of the wrong size is never retried.
    let mut moved = w.clone();
    for _ in 0..3 {
        // The pointer rests on the title bar first (the window manager sees it enter, and
        // the cursor changes), so the press lands on a frame that knows the pointer is there.
        d.act_settled(Action::MouseMove { coordinate: start }).await;
        assert_eq!(d.cursor_position().await.unwrap(), start);
        d.act_settled(Action::Drag {
            path: vec![start, Point::new(start.x + 60, start.y + 20), end],
            button: Button::Left,
        })
        .await;
        moved = d
            .windows()
            .await
            .unwrap()
            .into_iter()
            .find(|x| x.id == w.id)
            .unwrap();
        if (moved.x, moved.y) != (w.x, w.y) {
            break;
        }
        d.settle(d.mark(), SettleOptions::default()).await;
    }
    assert_eq!(
        (moved.x - w.x, moved.y - w.y),
        (150, 100),
        "{w:?} -> {moved:?}"
    );
}

#[tokio::test]
async fn double_and_triple_clicks_select_a_word_and_a_line() {
    let d = desktop().await;
    let w = d
        .terminal(
            "select-test",
            Some("printf 'alpha beta gamma\\n'; exec sleep 600"),
        )
        .await;
    // Row 0 of the terminal, about two characters in: inside "alpha".
    let (x, y) = (w.x + 20, w.y + 10);
    d.act_settled(click(x, y, Button::Left, 2)).await;
    assert_eq!(d.sh("xclip -o -selection primary").await, "alpha");
    // Right after the double click, on the same spot: still exactly three clicks.
    d.act_settled(click(x, y, Button::Left, 3)).await;
    assert_eq!(
        d.sh("xclip -o -selection primary").await.trim_end(),
        "alpha beta gamma"
    );
}

#[tokio::test]
async fn mistakes_are_errors_and_nothing_happens() {
    let d = desktop().await;
    d.act_settled(Action::MouseMove {
        coordinate: Point::new(10, 10),
    })
    .await;
    for (action, needle) in [
        (key("ctrl+Nope"), "unknown key 'Nope'"),
        (
            click(1280, 5, Button::Left, 1),
            "outside the 1280x800 screen",
        ),
        (click(-1, 5, Button::Left, 1), "outside"),
        (
            Action::Drag {
                path: vec![Point::new(1, 1), Point::new(5000, 1)],
                button: Button::Left,
            },
            "outside",
        ),
        (
            Action::Scroll {
                coordinate: None,
                dx: 0,
                dy: 1,
                modifiers: vec!["hyper-ctrl".into()],
            },
            "unknown key",
        ),
    ] {
        match d.act(&action).await {
            Err(ActionError::Invalid(e)) => {
                assert!(e.to_string().contains(needle), "{action:?}: {e}")
            }
            other => panic!("{action:?} should be invalid, got {other:?}"),
        }
    }
    // The pointer never moved.
    assert_eq!(d.cursor_position().await.unwrap(), Point::new(10, 10));
}

#[tokio::test]
async fn wait_window_returns_when_the_window_appears_and_times_out_otherwise() {
    let d = desktop().await;
    let m = WindowMatch {
        class: Some(regex::Regex::new("(?i)mousepad").unwrap()),
        title: None,
    };
    let sandbox = d.sandbox.clone();
    let launcher = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        sandbox.spawn("mousepad").await.unwrap();
    });
    let started = Instant::now();
    let w = d.wait_window(&m, Duration::from_secs(30)).await.unwrap();
    launcher.await.unwrap();
    assert!(w.class.to_lowercase().contains("mousepad"), "{w:?}");
    assert!(started.elapsed() >= Duration::from_millis(300));

    // Focus it, see it active, close it, see it go.
    d.focus(w.id, Duration::from_secs(5)).await.unwrap();
    assert_eq!(d.active_window().await.unwrap().map(|a| a.id), Some(w.id));
    d.close_window(w.id).await.unwrap();
    eventually("the window to close", Duration::from_secs(10), || async {
        let open = d.windows().await.unwrap();
        check(!open.iter().any(|x| x.id == w.id), || format!("{open:?}"))
    })
    .await;

    let never = WindowMatch {
        title: Some(regex::Regex::new("^no such window$").unwrap()),
        class: None,
    };
    let started = Instant::now();
    match d.wait_window(&never, Duration::from_millis(600)).await {
        Err(DesktopError::Timeout { .. }) => {}
        other => panic!("expected a timeout, got {other:?}"),
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(600) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
}

#[tokio::test]
async fn settle_waits_for_the_screen_to_be_quiet() {
    let d = desktop().await;
    // No reaction seen yet: the first-change window is the floor.
    assert_eq!(d.first_change_window(Duration::ZERO), Duration::ZERO);
    // The panel and the desktop may still be painting: wait that out first.
    let startup = SettleOptions {
        quiet: Duration::from_millis(500),
        max: Duration::from_secs(10),
        ..Default::default()
    };
    assert!(d.settle(d.mark(), startup).await.quiet);
    // Nothing happening: settle gives up waiting for a first change soon. (A cold machine's
    // panel may paint again after a half-second pause: until a settle sees no change at all,
    // something is still happening, so the idle case is not there yet.)
    let deadline = Instant::now() + Duration::from_secs(30);
    let idle = loop {
        let idle = d.settle(d.mark(), SettleOptions::default()).await;
        if idle.changes == 0 {
            break idle;
        }
        assert!(
            Instant::now() < deadline,
            "the desktop never went idle: {idle:?}"
        );
    };
    assert!(idle.quiet && idle.waited_ms < 500.0, "{idle:?}");

    d.terminal("settle-test", None).await;
    let before = d.mark();
    // A generous first-change window: this checks the quiet logic, not the window.
    let opts = SettleOptions {
        first_change: Duration::from_secs(2),
        ..Default::default()
    };
    // Settle is already waiting when the keys go out (join polls it first), so it sees the
    // first change however fast the terminal echoes: on a loaded machine the echo can
    // otherwise land between the action's return and the start of settle.
    let action = typed("echo settled");
    let (report, acted) = tokio::join!(d.settle(before, opts), d.act(&action));
    acted.unwrap();
    assert!(report.quiet && report.changes > 0, "{report:?}");
    assert!(
        report.waited_ms >= opts.quiet.as_millis() as f64,
        "{report:?}"
    );
    // The reaction it saw feeds the window later settles use.
    assert!(report.reaction_ms.is_some(), "{report:?}");
    let window = d.first_change_window(Duration::ZERO);
    assert!(
        window > Duration::ZERO && window <= Duration::from_secs(1),
        "{window:?}"
    );
}

#[tokio::test]
async fn a_dead_container_is_a_clear_error() {
    let d = desktop().await;
    common::docker_rm(d.sandbox.id());
    // The VNC connection notices the container is gone.
    let err = eventually(
        "an action on a removed container to fail",
        Duration::from_secs(10),
        || async {
            match d.act(&typed("x")).await {
                Err(ActionError::Desktop(e)) => Ok(e.to_string()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    assert!(
        err.contains(d.sandbox.short_id()) && err.contains("VNC"),
        "{err}"
    );
    let shot = d.screenshot().await.unwrap_err().to_string();
    assert!(shot.contains("closed"), "{shot}");
}
