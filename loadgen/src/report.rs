//! Reports: a human summary, one JSON line, and with `--out` the JSON, the
//! HdrHistogram percentile distribution and an SVG latency-percentile plot.

use std::fmt::Write as _;
use std::path::Path;

use hdrhistogram::Histogram;
use plotters::prelude::*;

/// The percentile distribution as text, in HdrHistogram's classic layout
/// (value in microseconds, percentile, total count, 1/(1-percentile)).
pub fn percentile_distribution(h: &Histogram<u64>) -> String {
    let mut out = String::from("       Value(us)   Percentile   TotalCount 1/(1-Percentile)\n\n");
    for v in h.iter_quantiles(5) {
        let q = v.quantile_iterated_to();
        let inv = if q < 1.0 { 1.0 / (1.0 - q) } else { f64::INFINITY };
        let _ = writeln!(
            out,
            "{:>16} {:>12.6} {:>12} {:>14.2}",
            v.value_iterated_to(),
            q,
            v.count_since_last_iteration(),
            inv
        );
    }
    let _ = writeln!(
        out,
        "#[Mean = {:.2}, StdDeviation = {:.2}]\n#[Max = {}, Total count = {}]",
        h.mean(),
        h.stdev(),
        h.max(),
        h.len()
    );
    out
}

/// Draws latency against percentile (log-scaled "nines" axis) into `path`.
pub fn plot(h: &Histogram<u64>, title: &str, path: &Path) -> anyhow::Result<()> {
    let points: Vec<(f64, f64)> = h
        .iter_quantiles(5)
        .filter(|v| v.quantile_iterated_to() < 1.0)
        .map(|v| {
            let nines = -(1.0 - v.quantile_iterated_to()).log10();
            (nines, v.value_iterated_to() as f64 / 1000.0)
        })
        .collect();
    let max_x = points.iter().map(|p| p.0).fold(1.0, f64::max).ceil();
    let max_y = points.iter().map(|p| p.1).fold(0.01, f64::max) * 1.1;
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_x, 0.0..max_y)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_label_formatter(&|x| format!("{:.4}%", 100.0 * (1.0 - 10f64.powf(-x))))
        .draw()?;
    chart.draw_series(LineSeries::new(points, &BLUE))?;
    root.present()?;
    Ok(())
}

/// Writes `<name>.json`, `<name>.hgrm` and `<name>.svg` into `dir`.
pub fn write_files(
    dir: &Path,
    name: &str,
    json: &serde_json::Value,
    h: &Histogram<u64>,
    title: &str,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join(format!("{name}.json")),
        serde_json::to_string_pretty(json)? + "\n",
    )?;
    std::fs::write(dir.join(format!("{name}.hgrm")), percentile_distribution(h))?;
    plot(h, title, &dir.join(format!("{name}.svg")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distribution_ends_at_the_max() {
        let mut h = crate::stats::latency_histogram();
        for v in 1..=100 {
            h.record(v).unwrap();
        }
        let text = percentile_distribution(&h);
        assert!(text.contains("#[Max = 100, Total count = 100]"), "{text}");
    }

    #[test]
    fn writes_all_three_files() {
        let mut h = crate::stats::latency_histogram();
        for v in 1..=1000 {
            h.record(v * 3).unwrap();
        }
        let dir = std::env::temp_dir().join(format!("lg-report-{}", std::process::id()));
        write_files(&dir, "run", &serde_json::json!({"x": 1}), &h, "test").unwrap();
        for ext in ["json", "hgrm", "svg"] {
            let body = std::fs::read_to_string(dir.join(format!("run.{ext}"))).unwrap();
            assert!(!body.is_empty(), "{ext}");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
