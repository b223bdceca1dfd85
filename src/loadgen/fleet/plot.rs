//! A fleet run's timeline drawn as a PNG: three panels over the run's seconds (calls and
//! Vault signs per second with the outbound limit; latency p50/p99; queue depth and
//! workloads without a valid certificate), phase starts marked. Text is set in DejaVu Sans,
//! compiled in (the `dejavu` crate), so a plot looks the same on every machine.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::prelude::*;

use super::FleetReport;

const WIDTH: u32 = 1200;
const PANEL_HEIGHT: u32 = 300;
const TITLE_HEIGHT: u32 = 40;
/// Width and height of every plot, in pixels.
pub const SIZE: (u32, u32) = (WIDTH, PANEL_HEIGHT * 3 + TITLE_HEIGHT);

/// Why a plot was not written.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("drawing: {0}")]
    Draw(String),
    #[error("writing {0}: {1}")]
    Write(PathBuf, String),
}

fn draw_err(e: impl std::fmt::Display) -> PlotError {
    PlotError::Draw(e.to_string())
}

/// Registers DejaVu Sans as plotters' sans-serif, once per process.
fn register_font() -> Result<(), PlotError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
            .is_ok()
    });
    ok.then_some(())
        .ok_or_else(|| PlotError::Draw("the compiled-in font did not load".into()))
}

/// One line of a panel.
struct Series {
    label: &'static str,
    color: RGBColor,
    points: Vec<(f64, f64)>,
}

/// Draws `report` to `out` (PNG). `limit` is the Vault outbound limit to draw, if any.
pub fn write_png(
    report: &FleetReport,
    title: &str,
    limit: Option<f64>,
    out: &Path,
) -> Result<(), PlotError> {
    register_font()?;
    let height = SIZE.1;
    let mut buf = vec![0u8; (WIDTH * height * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let (top, body) = root.split_vertically(TITLE_HEIGHT);
        top.titled(title, ("sans-serif", 22)).map_err(draw_err)?;
        let panels = body.split_evenly((3, 1));
        let t = report.timeline.iter().enumerate();
        let at = |i: usize| i as f64;
        let mut rates = vec![
            Series {
                label: "certificates issued/s",
                color: RGBColor(31, 119, 180),
                points: t.clone().map(|(i, s)| (at(i), s.ok as f64)).collect(),
            },
            Series {
                label: "refusals/s",
                color: RGBColor(214, 39, 40),
                points: t
                    .clone()
                    .map(|(i, s)| (at(i), s.errors.values().sum::<usize>() as f64))
                    .collect(),
            },
            Series {
                label: "Vault signs/s (metrics' replica)",
                color: RGBColor(44, 160, 44),
                points: t
                    .clone()
                    .filter_map(|(i, s)| Some((at(i), s.vault_signs?)))
                    .collect(),
            },
        ];
        if let Some(limit) = limit {
            rates.push(Series {
                label: "outbound limit (per replica)",
                color: RGBColor(127, 127, 127),
                points: vec![(0.0, limit), (report.timeline.len() as f64, limit)],
            });
        }
        let (p50, p99) = report.latency_percentiles();
        let latency = vec![
            Series {
                label: "p50 ms",
                color: RGBColor(31, 119, 180),
                points: p50
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| (at(i), v))
                    .collect(),
            },
            Series {
                label: "p99 ms",
                color: RGBColor(255, 127, 14),
                points: p99
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| (at(i), v))
                    .collect(),
            },
        ];
        let backlog = vec![
            Series {
                label: "queued calls (metrics' replica)",
                color: RGBColor(148, 103, 189),
                points: t
                    .clone()
                    .filter_map(|(i, s)| Some((at(i), s.queued?)))
                    .collect(),
            },
            Series {
                label: "workloads without a valid certificate",
                color: RGBColor(214, 39, 40),
                points: t.map(|(i, s)| (at(i), s.uncovered as f64)).collect(),
            },
        ];
        let phases: Vec<(f64, &str)> = report
            .phases
            .iter()
            .map(|p| (p.from_s as f64, p.name.as_str()))
            .collect();
        let len = report.timeline.len().max(1) as f64;
        for (area, (caption, series)) in panels.iter().zip([
            ("calls per second", rates),
            ("latency (ms)", latency),
            ("backlog", backlog),
        ]) {
            panel(area, caption, &series, len, &phases)?;
        }
        root.present().map_err(draw_err)?;
    }
    let file =
        std::fs::File::create(out).map_err(|e| PlotError::Write(out.into(), e.to_string()))?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), WIDTH, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder
        .write_header()
        .and_then(|mut w| w.write_image_data(&buf))
        .map_err(|e| PlotError::Write(out.into(), e.to_string()))
}

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    caption: &str,
    series: &[Series],
    len: f64,
    phases: &[(f64, &str)],
) -> Result<(), PlotError>
where
    DB::ErrorType: 'static,
{
    let top = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(1.0f64, f64::max)
        // Headroom for the legend under the phase names.
        * 1.5;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(28)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..len, 0.0..top)
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .light_line_style(WHITE)
        .draw()
        .map_err(draw_err)?;
    for (x, name) in phases {
        chart
            .draw_series(LineSeries::new(
                [(*x, 0.0), (*x, top)],
                RGBColor(200, 200, 200),
            ))
            .map_err(draw_err)?;
        chart
            .draw_series(std::iter::once(Text::new(
                (*name).to_owned(),
                (*x + len * 0.005, top * 0.97),
                ("sans-serif", 12),
            )))
            .map_err(draw_err)?;
    }
    for s in series {
        let color = s.color;
        chart
            .draw_series(LineSeries::new(
                s.points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(draw_err)?
            .label(s.label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color.stroke_width(2)));
    }
    // Below the phase names, at the right.
    let (width, _) = chart.plotting_area().dim_in_pixel();
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::Coordinate(width as i32 - 330, 20))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(draw_err)?;
    Ok(())
}
