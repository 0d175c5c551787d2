//! A run's report.html in a real browser: Debian's headless Chromium loads the file (no
//! network), its DOM holds every chart as inline SVG with drawn content, and a screenshot
//! shows the charts painted (the heatmap colours and the plot lines). `.ci/run` installs
//! Chromium; without it this test fails and says so.

use std::path::Path;
use std::process::Command;

use crate::support::*;

const CHROMIUM: &str = "/usr/bin/chromium";

fn chromium(args: &[&str], page: &Path) -> std::process::Output {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: install Debian's chromium package (`apt-get install chromium`; .ci/run does)"
    );
    let profile = scratch("chromium-profile");
    let out = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    drop(profile);
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

#[test]
fn the_report_opens_in_headless_chromium_with_its_charts_drawn() {
    let tmp = scratch("browser");
    let dir = write_run(&tmp, &recorded_run());
    let o = run(zonebench().arg("report").arg(&dir));
    assert_eq!(o.status.code(), Some(0));
    let page = dir.join("report.html");
    let charts = files_with(&dir.join("charts"), "svg").len();
    assert!(charts >= 8);

    // The DOM as the browser built it: every chart is an inline SVG with shapes and text.
    let dom = String::from_utf8(chromium(&["--dump-dom"], &page).stdout).unwrap();
    assert_eq!(dom.matches("<figure class=\"chart\"").count(), charts, "a figure per chart");
    assert_eq!(dom.matches("<svg").count(), charts, "an inline SVG per chart");
    assert!(dom.matches("<rect").count() > 4 * 9, "heatmap cells are in the DOM");
    assert!(dom.matches("<polyline").count() >= 6, "percentile curves are in the DOM");
    assert!(dom.contains("tcp-rr: latency by percentile"));

    // The screenshot: charts are painted, not just present. Heatmap cells take colours of
    // the latency ramp (pale yellow to deep red) that nothing else on the page uses.
    let shot = dir.join("screenshot.png");
    chromium(&["--window-size=1200,2000", &format!("--screenshot={}", shot.display())], &page);
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&shot).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let ch = info.color_type.samples();
    let px: Vec<&[u8]> = buf[..info.buffer_size()].chunks(ch).collect();
    // A heatmap cell's colour lies on the latency ramp from (255, 245, 200) to (189, 0, 38).
    let on_ramp = |p: &&&[u8]| {
        let t = (245.0 - f64::from(p[1])) / 245.0;
        (f64::from(p[0]) - (255.0 - 66.0 * t)).abs() <= 6.0 && (f64::from(p[2]) - (200.0 - 162.0 * t)).abs() <= 6.0
    };
    let cells = px.iter().filter(on_ramp).count();
    let blue_line = px.iter().filter(|p| p[0] < 40 && (90..140).contains(&p[1]) && p[2] > 150).count();
    let non_white = px.iter().filter(|p| p[..3].iter().any(|c| *c < 230)).count();
    assert!(cells > 10_000, "heatmap cells painted: {cells} pixels in the heatmap colours");
    assert!(blue_line > 200, "percentile curves painted: {blue_line} blue pixels");
    assert!(non_white * 10 > px.len(), "the page is not blank: {non_white} of {}", px.len());
}
