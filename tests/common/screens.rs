//! What the scripted model looks for on a screenshot before it moves on: evidence that an
//! app is ready or that an action took effect (a prompt, a dialog, a painted page), so that
//! no test depends on an app being fast. Coordinates are those of a fresh 1280x800 desktop,
//! where the window manager places a first window at the top left.

/// Sampled pixels (every other one) in a box that pass `test`.
pub fn count(
    img: &image::RgbImage,
    x: (u32, u32),
    y: (u32, u32),
    test: fn([u8; 3]) -> bool,
) -> usize {
    (y.0..y.1.min(img.height()))
        .step_by(2)
        .flat_map(|yy| {
            (x.0..x.1.min(img.width()))
                .step_by(2)
                .map(move |xx| (xx, yy))
        })
        .filter(|&(xx, yy)| test(img.get_pixel(xx, yy).0))
        .count()
}

/// The page's text is painted (Firefox shows a blank page for a while after its title is set).
pub fn page_painted(img: &image::RgbImage) -> bool {
    count(img, (40, 700), (130, 320), |p| {
        u32::from(p[0]) + u32::from(p[1]) + u32::from(p[2]) < 450
    }) > 20
}

/// A page is painted and no link is on it: neither blue nor visited purple text. (Right
/// after the click the link turns purple while the old page is still shown; on a loaded
/// machine the next page can take a while after that.)
pub fn link_gone(img: &image::RgbImage) -> bool {
    page_painted(img)
        && count(img, (40, 700), (130, 320), |p| {
            p[2] > 120 && i32::from(p[2]) - i32::from(p[1]) > 60
        }) == 0
}

/// A GTK file dialog is open (its selected "Home" place is a block of selection blue).
pub fn file_dialog_open(img: &image::RgbImage) -> bool {
    count(img, (0, 640), (30, 400), |p| {
        p[2] > 200 && p[0] < 100 && (100..170).contains(&p[1])
    }) > 800
}

/// Thunar's rename dialog is open (the selected part of the name in its entry).
pub fn rename_dialog_open(img: &image::RgbImage) -> bool {
    count(img, (250, 640), (230, 420), |p| {
        p[2] > 200 && p[0] < 100 && (100..170).contains(&p[1])
    }) > 100
}

/// A terminal window is open and its shell has printed its prompt (the green
/// `user@desktop` of bash's prompt on the black terminal background), at any screen size
/// and any scale the screenshot was sent at: the new window's place is the top left.
pub fn terminal_ready(img: &image::RgbImage) -> bool {
    let (w, h) = (img.width() / 2, img.height() * 3 / 5);
    let samples = (w.div_ceil(2) * h.div_ceil(2)).max(1) as usize;
    let black = count(img, (0, w), (0, h), |p| p[0] < 20 && p[1] < 20 && p[2] < 20);
    let green = count(img, (0, w), (0, h), |p| {
        p[1] > 180 && p[0] < 140 && p[2] < 140
    });
    black * 10 > samples * 3 && green > 10
}

/// The sign-up page of tests/tasks/firefox-form.toml says "Thank you!" under its form.
pub fn form_submitted(img: &image::RgbImage) -> bool {
    count(img, (56, 180), (292, 320), |p| {
        u32::from(p[0]) + u32::from(p[1]) + u32::from(p[2]) < 300
    }) > 40
}
