//! SVG plots next to the CSVs they draw: learning curves of a run (`curves-STAGE.svg`
//! beside `metrics.csv`) and the dev metric against each swept parameter of a sweep.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use plotters::prelude::*;

use crate::report::MetricsRow;
use crate::files::write_atomic;

const SIZE: (u32, u32) = (1100, 420);
const FONT: &str = "sans-serif";

/// Writes `RUN_DIR/curves-STAGE.svg` for each stage in `RUN_DIR/metrics.csv`: training and
/// dev loss against step on the left, dev accuracy and F1 against step on the right.
/// Returns the files written.
pub fn learning_curves(run_dir: &Path) -> Result<Vec<PathBuf>> {
    let metrics = run_dir.join("metrics.csv");
    if !metrics.is_file() {
        return Ok(Vec::new());
    }
    let mut reader = csv::Reader::from_path(&metrics).with_context(|| format!("{}: cannot read", metrics.display()))?;
    let mut by_stage: BTreeMap<String, Vec<MetricsRow>> = BTreeMap::new();
    for row in reader.deserialize::<MetricsRow>() {
        let row = row.with_context(|| format!("{}: not a metrics.csv written by distill", metrics.display()))?;
        by_stage.entry(row.stage.clone()).or_default().push(row);
    }
    let mut written = Vec::new();
    for (stage, rows) in by_stage {
        let series = |split: &str, value: fn(&MetricsRow) -> f64| -> Vec<(f64, f64)> {
            rows.iter().filter(|r| r.split == split).map(|r| (r.step as f64, value(r))).collect()
        };
        let losses = [("train loss (epoch mean so far)", series("train", |r| r.loss)), ("dev loss", series("dev", |r| r.loss))];
        let scores = [("dev accuracy", series("dev", |r| r.accuracy)), ("dev F1", series("dev", |r| r.f1))];
        let path = run_dir.join(format!("curves-{stage}.svg"));
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
            root.fill(&WHITE).map_err(plot_error)?;
            let (left, right) = root.split_horizontally(SIZE.0 / 2);
            line_panel(&left, &format!("{stage}: loss"), "step", "loss", &losses)?;
            line_panel(&right, &format!("{stage}: dev metrics"), "step", "", &scores)?;
            root.present().map_err(plot_error)?;
        }
        write_atomic(&path, svg.as_bytes())?;
        written.push(path);
    }
    Ok(written)
}

/// One swept value and the dev metric its run reached.
pub struct SweepPoint {
    pub value: String,
    pub numeric: Option<f64>,
    pub metric: f64,
}

/// `dev metric vs parameter`: every point as a dot, the mean per value as a line. Numeric
/// values are placed on a numeric axis, others (strings, lists) side by side in grid order.
pub fn sweep_parameter(path: &Path, parameter: &str, metric_name: &str, points: &[SweepPoint]) -> Result<()> {
    let mut values: Vec<&str> = Vec::new();
    for p in points {
        if !values.contains(&p.value.as_str()) {
            values.push(&p.value);
        }
    }
    let numeric = points.iter().all(|p| p.numeric.is_some());
    let x_of = |p: &SweepPoint| match (numeric, p.numeric) {
        (true, Some(x)) => x,
        _ => values.iter().position(|v| *v == p.value).unwrap_or(0) as f64,
    };
    let mut means: Vec<(f64, f64)> = values
        .iter()
        .map(|v| {
            let at: Vec<&SweepPoint> = points.iter().filter(|p| p.value == *v).collect();
            (x_of(at[0]), at.iter().map(|p| p.metric).sum::<f64>() / at.len() as f64)
        })
        .collect();
    means.sort_by(|a, b| a.0.total_cmp(&b.0));
    let dots: Vec<(f64, f64)> = points.iter().map(|p| (x_of(p), p.metric)).collect();

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (640, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let (x_range, y_range) = ranges(&dots);
        let mut chart = ChartBuilder::on(&root)
            .caption(format!("{metric_name} vs {parameter}"), (FONT, 20))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(x_range, y_range)
            .map_err(plot_error)?;
        let labels = values.clone();
        let mut mesh = chart.configure_mesh();
        mesh.x_desc(parameter).y_desc(metric_name);
        let categorical = |x: &f64| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 {
                labels.get(i as usize).map(|s| s.to_string()).unwrap_or_default()
            } else {
                String::new()
            }
        };
        if !numeric {
            mesh.x_labels(values.len() + 1).x_label_formatter(&categorical);
        }
        mesh.draw().map_err(plot_error)?;
        chart
            .draw_series(dots.iter().map(|&(x, y)| Circle::new((x, y), 4, BLUE.filled())))
            .map_err(plot_error)?
            .label("one run")
            .legend(|(x, y)| Circle::new((x + 10, y), 4, BLUE.filled()));
        chart
            .draw_series(LineSeries::new(means, RED.stroke_width(2)))
            .map_err(plot_error)?
            .label("mean per value")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
        chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(plot_error)?;
        root.present().map_err(plot_error)?;
    }
    write_atomic(path, svg.as_bytes())
}

fn line_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[(&str, Vec<(f64, f64)>)],
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let all: Vec<(f64, f64)> = series.iter().flat_map(|(_, s)| s.iter().copied()).collect();
    let (x_range, y_range) = ranges(&all);
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x_range, y_range)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()
        .map_err(plot_error)?;
    for (i, (name, points)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(2)))
            .map_err(plot_error)?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        // Dots show where evaluations happened (one point would otherwise draw nothing).
        chart.draw_series(points.iter().map(|&(x, y)| Circle::new((x, y), 3, color.filled()))).map_err(plot_error)?;
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(plot_error)?;
    Ok(())
}

/// Axis ranges around `points` with a 5% margin (and a usable range for a single value).
fn ranges(points: &[(f64, f64)]) -> (std::ops::Range<f64>, std::ops::Range<f64>) {
    let span = |values: Vec<f64>| {
        let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if !lo.is_finite() || !hi.is_finite() {
            return 0.0..1.0;
        }
        let pad = if hi > lo { 0.05 * (hi - lo) } else { 0.5 * lo.abs().max(1e-3) };
        (lo - pad)..(hi + pad)
    };
    (span(points.iter().map(|p| p.0).collect()), span(points.iter().map(|p| p.1).collect()))
}

fn plot_error<E: std::error::Error + Send + Sync + 'static>(e: DrawingAreaErrorKind<E>) -> anyhow::Error {
    anyhow::anyhow!("cannot draw the plot: {e}")
}
