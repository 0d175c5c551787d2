//! `zonebench report` on a run recorded on the lab and on synthetic runs holding the
//! service-scaling sweep and topology variants: every chart is written as SVG that parses
//! (and as PNG with text drawn from the embedded font), and report.html is self-contained.

use std::path::Path;

use crate::support::*;

fn svg_texts(svg: &str) -> Vec<String> {
    let doc = roxmltree::Document::parse(svg).unwrap();
    doc.descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text())
        .map(|t| t.trim().to_string())
        .collect()
}

/// Decoded RGB(A) pixels of a PNG with its width.
fn png_pixels(path: &Path) -> (Vec<[u8; 3]>, usize) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    let px = buf[..info.buffer_size()].chunks(channels).map(|c| [c[0], c[1], c[2]]).collect();
    (px, info.width as usize)
}

#[test]
fn a_recorded_run_gets_a_self_contained_report_and_charts_that_parse() {
    let tmp = scratch("report");
    let dir = write_run(&tmp, &recorded_run());
    let o = run(zonebench().arg("report").arg(&dir).arg("--png"));
    assert_eq!(o.status.code(), Some(0));
    let svgs = files_with(&dir.join("charts"), "svg");
    // A matrix per test (4), latency percentiles for tcp-rr, tcp-crr and http (3), connect
    // percentiles for tcp-crr (1).
    let names: Vec<String> = svgs.iter().map(|p| p.file_stem().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(
        names,
        [
            "http-matrix",
            "http-percentiles",
            "tcp-crr-connect",
            "tcp-crr-matrix",
            "tcp-crr-percentiles",
            "tcp-rr-matrix",
            "tcp-rr-percentiles",
            "tcp-stream-matrix"
        ]
    );
    for p in &svgs {
        let svg = std::fs::read_to_string(p).unwrap();
        let texts = svg_texts(&svg);
        assert!(!texts.is_empty(), "{} has no text", p.display());
    }
    let matrix = svg_texts(&std::fs::read_to_string(dir.join("charts/tcp-rr-matrix.svg")).unwrap());
    assert!(matrix.contains(&"tcp-rr: p50 latency".to_string()), "{matrix:?}");
    // Nine cells, each showing a latency.
    assert_eq!(matrix.iter().filter(|t| t.ends_with("µs") || t.ends_with("ms")).count(), 9, "{matrix:?}");
    let pct = svg_texts(&std::fs::read_to_string(dir.join("charts/tcp-rr-percentiles.svg")).unwrap());
    assert!(
        pct.iter().any(|t| t.starts_with("same zone (")) && pct.iter().any(|t| t.starts_with("cross zone (")),
        "{pct:?}"
    );
    assert!(pct.contains(&"99.9%".to_string()), "the 1/(1-p) axis is labelled in percentiles: {pct:?}");

    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert_eq!(html.matches("<svg").count(), svgs.len(), "every chart inline");
    assert!(!html.contains("<script") && !html.contains("src=") && !html.contains("<link"), "self-contained");
    let outside: Vec<&str> = html
        .split(['"', '\''])
        .filter(|s| s.starts_with("http://") || s.starts_with("https://") || s.starts_with("//"))
        .filter(|s| !s.starts_with("http://www.w3.org/"))
        .collect();
    assert!(outside.is_empty(), "no network references: {outside:?}");
    assert!(html.contains("<th class=\"l\">kernel</th><td class=\"l\">6.18.44-fc-v595</td>"), "fingerprint shown");
    assert!(html.contains("repeat = 1"), "a single-repeat run says it has no noise figure");

    // PNGs: the same charts, with text drawn (dark pixels in the title band) and colour.
    let pngs = files_with(&dir.join("charts"), "png");
    assert_eq!(pngs.len(), svgs.len());
    let (px, width) = png_pixels(&dir.join("charts/tcp-rr-matrix.png"));
    let title_ink = px[..width * 30].iter().filter(|p| p.iter().all(|c| *c < 100)).count();
    assert!(title_ink > 50, "the title is drawn: {title_ink} dark pixels");
    let coloured = px.iter().filter(|p| p.iter().max().unwrap() - p.iter().min().unwrap() > 60).count();
    assert!(coloured * 5 > px.len(), "the cells are filled: {coloured} of {}", px.len());
}

/// A measurement of the recorded run, reshaped into one point of a sweep or variant.
fn point(
    template: &serde_json::Value,
    variant: &str,
    params: &[(&str, serde_json::Value)],
    slowdown: f64,
) -> serde_json::Value {
    let mut m = template.clone();
    m["via"] = serde_json::json!("service");
    m["variant"] = serde_json::json!(variant);
    for (k, v) in params {
        m["params"][*k] = v.clone();
    }
    scale_latency(&mut m, slowdown);
    m
}

#[test]
fn the_service_sweep_and_topology_variants_are_charted_when_present() {
    let rec = recorded_run();
    let crr = rec["measurements"].as_array().unwrap().iter().find(|m| m["test"] == "tcp-crr").unwrap().clone();
    let rr = rec["measurements"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["test"] == "tcp-rr" && m["client"]["zone"] == "a")
        .unwrap()
        .clone();
    let mut ms = Vec::new();
    for dp in ["iptables", "nftables", "ebpf"] {
        for n in [10u64, 1000, 5000, 10000] {
            // iptables walks a chain per Service: slower with the count; the others stay flat.
            let slow = if dp == "iptables" { 1.0 + n as f64 / 5000.0 } else { 1.0 };
            ms.push(point(&crr, dp, &[("services", serde_json::json!(n))], slow));
        }
    }
    // Topology variants: in-zone answers, bytes that crossed zones.
    for (variant, in_zone, slow) in [("none", 0.33, 3.0), ("auto", 0.97, 1.0), ("prefer-close", 0.98, 1.0)] {
        for z in ["a", "b", "c"] {
            let mut m = point(&rr, variant, &[], slow);
            m["client"]["zone"] = serde_json::json!(z);
            let total = 10_000u64;
            let here = (in_zone * total as f64) as u64;
            let other = if z == "a" { "b" } else { "a" };
            m["locality"] = serde_json::json!({
                "in_zone_fraction": in_zone,
                "answers_by_zone": { z: here, other: total - here },
                "cross_zone_bytes": (total - here) * 2000,
            });
            ms.push(m);
        }
    }
    let mut r = rec.clone();
    r["measurements"] = serde_json::Value::Array(ms);
    r["cost"] = serde_json::json!({ "per_gb_cross_zone": 0.02 });
    let tmp = scratch("sweep");
    let dir = write_run(&tmp, &r);
    let o = run(zonebench().arg("report").arg(&dir));
    assert_eq!(o.status.code(), Some(0));

    let read = |name: &str| std::fs::read_to_string(dir.join("charts").join(format!("{name}.svg"))).unwrap();
    let sweep = svg_texts(&read("tcp-crr-service-sweep"));
    for label in ["iptables p50", "iptables p99", "nftables p50", "ebpf p99", "Services in the cluster"] {
        assert!(sweep.contains(&label.to_string()), "{label} missing: {sweep:?}");
    }
    let fraction = svg_texts(&read("tcp-rr-in-zone-fraction"));
    for label in ["none", "auto", "prefer-close", "client zone a", "97 %", "33 %"] {
        assert!(fraction.contains(&label.to_string()), "{label} missing: {fraction:?}");
    }
    let latency = svg_texts(&read("tcp-rr-variant-latency"));
    assert!(latency.contains(&"p50".to_string()) && latency.contains(&"p99".to_string()), "{latency:?}");
    let cost = svg_texts(&read("tcp-rr-variant-cost"));
    assert!(cost.iter().any(|t| t.contains("$0.02/GB")), "{cost:?}");

    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(html.contains("<h2 id=\"service-sweep\">Service scaling</h2>"));
    assert!(html.contains("<h2 id=\"topology\">Topology variants</h2>"));
    // none: 6,700 of 10,000 answers crossed at 2,000 bytes each: 1,340 bytes per request,
    // 1.34 GB per million requests, at $0.02 per GB $0.0268.
    assert!(html.contains("<td>0.0268</td>"), "cost per million requests of `none`");
    // iptables at 10,000 Services is 3× its connect time at 10; the table shows both.
    let row = |dp: &str, n: &str| {
        html.lines().find(|l| l.contains(&format!("<td class=\"l\">{dp}</td><td>{n}</td>"))).map(String::from)
    };
    assert!(row("iptables", "10000").is_some() && row("ebpf", "10").is_some(), "{html}");
}
