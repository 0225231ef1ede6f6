//! `shoal-load --plot FILE.svg` (and `shoal demo`): the run drawn so a person sees at a glance
//! when throughput dipped, how the latency percentiles moved, and — with `--stage-stats` —
//! which stage's queue backed up, without reading numbers. Drawn with plotters' SVG backend.

use super::LoadReport;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

/// Pixels per panel.
const PANEL: (u32, u32) = (1000, 320);

fn text<E: std::fmt::Display>(error: E) -> String {
    format!("drawing the plot failed: {error}")
}

/// Writes the plot of `report` to `path`: throughput per second, p50/p99/p99.9 per second,
/// and, when stages were sampled, every queue that was ever non-empty over time.
pub fn write_svg(report: &LoadReport, path: &Path) -> Result<(), String> {
    let stages = report
        .stages
        .as_ref()
        .map(|summary| {
            summary
                .stages
                .iter()
                .filter(|s| s.peak_depth > 0)
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let panels = if stages.is_empty() { 2 } else { 3 };
    let root = SVGBackend::new(path, (PANEL.0, PANEL.1 * panels)).into_drawing_area();
    root.fill(&WHITE).map_err(text)?;
    let areas = root.split_evenly((panels as usize, 1));
    throughput(report, &areas[0])?;
    latency(report, &areas[1])?;
    if let Some(area) = areas.get(2) {
        queue_depths(&stages, area)?;
    }
    root.present().map_err(text)
}

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// A latency line: its label, where a second keeps it, its colour.
type Percentile = (&'static str, fn(&super::Second) -> u64, RGBColor);

fn throughput(report: &LoadReport, area: &Area) -> Result<(), String> {
    let seconds = report.series.len().max(1) as u64;
    let top = report
        .series
        .iter()
        .map(|s| s.ops.max(s.errors))
        .max()
        .unwrap_or(0)
        .max(1);
    let mut chart = ChartBuilder::on(area)
        .caption("throughput per second", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0..seconds, 0..top + top / 10 + 1)
        .map_err(text)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("ops/s")
        .draw()
        .map_err(text)?;
    chart
        .draw_series(LineSeries::new(
            report.series.iter().map(|s| (s.t, s.ops)),
            &BLUE,
        ))
        .map_err(text)?
        .label("succeeded")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    chart
        .draw_series(LineSeries::new(
            report.series.iter().map(|s| (s.t, s.errors)),
            &RED,
        ))
        .map_err(text)?
        .label("failed")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(text)
}

fn latency(report: &LoadReport, area: &Area) -> Result<(), String> {
    let seconds = report.series.len().max(1) as u64;
    let ms = |us: u64| us as f64 / 1e3;
    let top = report
        .series
        .iter()
        .map(|s| ms(s.p999_us))
        .fold(1.0, f64::max);
    // Log scale: a p50 of 0.2 ms and a p99.9 of 200 ms both stay readable.
    let mut chart = ChartBuilder::on(area)
        .caption(
            "latency per second (p50, p99, p99.9; log scale)",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0..seconds, (0.01f64..top * 1.5).log_scale())
        .map_err(text)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("ms")
        .draw()
        .map_err(text)?;
    let lines: [Percentile; 3] = [
        ("p50", |s| s.p50_us, GREEN),
        ("p99", |s| s.p99_us, BLUE),
        ("p99.9", |s| s.p999_us, RED),
    ];
    for (label, value, color) in lines {
        // A second with no successful request has no latency: it is left out, not drawn as 0.
        let points = report
            .series
            .iter()
            .filter(|s| value(s) > 0)
            .map(|s| (s.t, ms(value(s))));
        chart
            .draw_series(LineSeries::new(points, &color))
            .map_err(text)?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(text)
}

fn queue_depths(stages: &[&super::stage_sampler::StageDepth], area: &Area) -> Result<(), String> {
    let end = stages
        .iter()
        .flat_map(|s| s.depths.last().map(|(t, _)| *t))
        .fold(1.0, f64::max);
    let top = stages
        .iter()
        .map(|s| s.peak_depth)
        .max()
        .unwrap_or(1)
        .max(1);
    let mut chart = ChartBuilder::on(area)
        .caption(
            "queue depth per node and stage (stages that queued at all)",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..end, 0..top + top / 10 + 1)
        .map_err(text)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("events queued")
        .draw()
        .map_err(text)?;
    for (i, stage) in stages.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(stage.depths.iter().copied(), color))
            .map_err(text)?
            .label(format!("{} {}", stage.node, stage.stage))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(text)
}

#[cfg(test)]
mod tests {
    use super::super::keys::KeyChoice;
    use super::super::stage_sampler::{StageDepth, StageSummary};
    use super::super::target::TargetSpec;
    use super::super::{LoadConfig, Second, Workload};
    use super::*;
    use std::time::Duration;

    /// Data lines drawn: coloured polylines (axes and grid are black), each drawn once in the
    /// chart and once in its legend.
    fn series(svg: &str) -> usize {
        let coloured = svg
            .split("<polyline")
            .skip(1)
            .filter_map(|rest| rest.split('>').next())
            .filter(|element| !element.contains("stroke=\"#000000\""))
            .count();
        coloured / 2
    }

    fn report(stages: Option<StageSummary>) -> LoadReport {
        let config = LoadConfig {
            target: TargetSpec::Redis {
                addr: "127.0.0.1:1".into(),
            },
            workload: Workload::A,
            key_choice: KeyChoice::Zipfian,
            keys: 10,
            key_prefix: "k".into(),
            value_bytes: 1,
            threads: 1,
            duration: Duration::from_secs(3),
            ops: None,
            rate: None,
            r: None,
            w: None,
            durable: None,
            seed: 1,
            load_phase: false,
            stage_stats: stages.is_some(),
        };
        let series = (1..=3)
            .map(|t| Second {
                t,
                ops: 1000 * t,
                errors: t - 1,
                p50_us: 200 * t,
                p99_us: 2_000 * t,
                p999_us: 20_000 * t,
            })
            .collect();
        LoadReport {
            config,
            elapsed_secs: 3.0,
            operations: Vec::new(),
            reads: 0,
            reads_with_siblings: 0,
            target_rate: None,
            achieved_rate: 2000.0,
            series,
            stages,
            load: None,
        }
    }

    /// Goal: the plot has a throughput panel (succeeded and failed), a latency panel (p50,
    /// p99, p99.9) and, with stage samples, a panel with one line per stage that queued at
    /// all — an empty queue is left out — each line labelled with its node and stage.
    #[test]
    fn plot_draws_throughput_latency_and_the_queues_that_backed_up() {
        let dir = tempfile::tempdir().expect("temp dir");
        let plain = dir.path().join("plain.svg");
        write_svg(&report(None), &plain).expect("plots");
        let svg = std::fs::read_to_string(&plain).expect("written");
        assert!(svg.contains("<svg") && svg.contains("throughput per second"));
        assert!(svg.contains("latency per second") && svg.contains("p99.9"));
        assert!(!svg.contains("queue depth"), "no stage samples, no panel");
        assert_eq!(series(&svg), 5, "2 throughput + 3 latency lines");

        let stage = |name: &str, depths: Vec<(f64, u64)>| {
            let mut stage = StageDepth::default();
            stage.node = "n1".into();
            stage.stage = name.into();
            stage.peak_depth = depths.iter().map(|d| d.1).max().unwrap_or(0);
            stage.depths = depths;
            stage
        };
        let backed_up = stage("storage", vec![(0.0, 0), (1.0, 40), (2.0, 3)]);
        let idle = stage("gossip", vec![(0.0, 0), (1.0, 0)]);
        let stages = StageSummary {
            stages: vec![backed_up, idle],
            ..StageSummary::default()
        };
        let with_stages = dir.path().join("stages.svg");
        write_svg(&report(Some(stages)), &with_stages).expect("plots");
        let svg = std::fs::read_to_string(&with_stages).expect("written");
        assert!(svg.contains("queue depth") && svg.contains("n1 storage"));
        assert!(
            !svg.contains("n1 gossip"),
            "a stage that never queued is left out"
        );
        assert_eq!(series(&svg), 6);
    }
}
