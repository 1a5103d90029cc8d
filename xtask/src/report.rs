//! The benchmark report: `results/bench.md` (the machine, then the tables
//! the two benchmark programs wrote) and `results/bench.svg` (in-kernel
//! cost against rule count; receiver-side cost per packet per mode),
//! drawn from `results/inkernel.json` and `results/rates.json`.

use std::{fs, path::Path, process::Command};

use anyhow::{Context as _, Result};
use plotters::prelude::*;
use serde_json::Value;

fn read_json(path: &Path) -> Result<Value> {
    let text = fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

/// Kernel, CPU and core count of this machine.
pub fn machine() -> String {
    let kernel = Command::new("uname").arg("-r").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default();
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo.lines().find_map(|l| l.strip_prefix("model name").and_then(|r| r.split(':').nth(1))).unwrap_or("unknown CPU").trim().to_string();
    let cores = cpuinfo.lines().filter(|l| l.starts_with("processor")).count();
    let mem_gib = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|k| k.parse::<f64>().ok()))
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    format!("Linux {kernel}, {model}, {cores} cores, {mem_gib:.0} GiB")
}

pub fn write(dir: &Path) -> Result<()> {
    let inkernel = read_json(&dir.join("inkernel.json"))?;
    let rates = read_json(&dir.join("rates.json"))?;
    let machine = machine();
    let md = format!(
        "# Benchmark report\n\nMeasured by `cargo xtask bench` on {machine}.\n\n![in-kernel cost and receiver-side cost](bench.svg)\n\n## In-kernel cost per packet\n\n{}\n## Whole-system rates\n\n{}",
        fs::read_to_string(dir.join("inkernel.md"))?,
        fs::read_to_string(dir.join("rates.md"))?
    );
    fs::write(dir.join("bench.md"), md)?;
    let mut all = serde_json::Map::new();
    all.insert("machine".into(), Value::String(machine.clone()));
    all.insert("inkernel".into(), inkernel.clone());
    all.insert("rates".into(), rates.clone());
    fs::write(dir.join("bench.json"), serde_json::to_string_pretty(&Value::Object(all))?)?;
    chart(&dir.join("bench.svg"), &inkernel, &rates, &machine).context("cannot draw the chart")?;
    Ok(())
}

fn chart(path: &Path, inkernel: &Value, rates: &Value, machine: &str) -> Result<()> {
    let root = SVGBackend::new(path, (1280, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(&format!("cargo xtask bench — {machine}"), ("sans-serif", 18))?;
    let (left, right) = root.split_horizontally(640);

    // Left: in-kernel ns per packet against rule count (log scale).
    let rows = inkernel["rows"].as_array().context("rows")?;
    let classes = [
        ("rule_drop", "rule drop"),
        ("rule_accept", "rule accept (new flow)"),
        ("established", "established"),
        ("invalid_no_flow", "invalid, no flow"),
        ("cookie_syn", "cookie SYN-ACK sent*"),
        ("cookie_ack_valid", "cookie ACK valid*"),
        ("cookie_ack_forged", "cookie ACK forged"),
        ("malformed", "malformed"),
    ];
    let max_ns = rows.iter().filter_map(|r| r["calibrated_ns"].as_f64()).fold(0.0, f64::max) * 1.15;
    let mut c = ChartBuilder::on(&left)
        .caption("In-kernel ns per packet (BPF_PROG_TEST_RUN)", ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((8f64..13_000f64).log_scale(), 0f64..max_ns)?;
    c.configure_mesh().x_desc("rules in the policy").y_desc("ns per packet").x_labels(4).draw()?;
    for (i, (id, label)) in classes.iter().enumerate() {
        let pts: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| r["id"] == *id)
            .filter_map(|r| Some((r["rules"].as_f64()?, r["calibrated_ns"].as_f64()?)))
            .collect();
        let color = Palette99::pick(i).to_rgba();
        c.draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
            .label(*label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
        c.draw_series(pts.iter().map(|p| Circle::new(*p, 3, color.filled())))?;
    }
    c.configure_series_labels().position(SeriesLabelPosition::UpperLeft).background_style(WHITE.mix(0.8)).border_style(BLACK).label_font(("sans-serif", 11)).draw()?;
    left.draw(&Text::new("* single runs, calibrated", (60, 530), ("sans-serif", 11)))?;

    // Right: receiver-side ns per packet per mode (1/rate - 1/ceiling), log scale.
    let mut bars: Vec<(String, f64, usize)> = Vec::new();
    for (group, sc) in rates["scenarios"].as_array().context("scenarios")?.iter().enumerate() {
        let short = match sc["id"].as_str().unwrap_or("") {
            "syn_flood" => "SYN flood".to_string(),
            other => other.replace("drop_", "drop, ") + " rules",
        };
        for m in sc["modes"].as_array().context("modes")? {
            if let Some(ns) = m["receiver_ns"]["median"].as_f64() {
                bars.push((format!("{short}: {}", m["id"].as_str().unwrap_or("")), ns.max(1.0), group));
            }
        }
    }
    let max = bars.iter().map(|b| b.1).fold(10.0, f64::max) * 2.0;
    let mut c = ChartBuilder::on(&right)
        .caption("Receiver-side ns per packet on veth (lower is better)", ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(150)
        .build_cartesian_2d((10f64..max).log_scale(), (0..bars.len()).into_segmented())?;
    let labels: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
    c.configure_mesh()
        .disable_y_mesh()
        .y_labels(bars.len() + 1)
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .x_desc("ns per packet, 1/rate - 1/ceiling (log scale)")
        .draw()?;
    c.draw_series(bars.iter().enumerate().map(|(i, (name, ns, group))| {
        let color = if name.contains("firewall") { RGBColor(31, 119, 180).to_rgba() } else { Palette99::pick(group + 3).to_rgba() };
        Rectangle::new([(10.0, SegmentValue::Exact(i)), (*ns, SegmentValue::Exact(i + 1))], color.filled())
    }))?;
    c.draw_series(bars.iter().enumerate().map(|(i, (_, ns, _))| Text::new(format!("{ns:.0}"), (*ns * 1.05, SegmentValue::CenterOf(i)), ("sans-serif", 11))))?;
    root.present()?;
    Ok(())
}
