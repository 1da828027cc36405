//! The tail-latency charts as inline SVG: percentiles over time (log scale), the heatmap (time ×
//! log-latency bucket) and the histogram. Plain shapes only; every number on them comes from the
//! `/latency` answer ([`LatencyView`]).
//!
//! SVG elements are always written with a closing tag (`rect {}`): inside `<svg>`, HTML parsers do
//! not close `<rect>` by themselves.

use hopscope_schemas::api::{LatencyView, Percentiles};
use hopscope_schemas::histogram::{bucket_lower_ns, bucket_upper_ns};
use hopscope_schemas::time::{TimeRange, parse_time};
use maud::{Markup, html};

use crate::page::duration;

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 220.0;
/// Room for the axis labels: left, right, top, bottom.
const MARGIN: (f64, f64, f64, f64) = (64.0, 16.0, 12.0, 28.0);

/// The four percentiles and the colour each is drawn in.
pub(crate) const SERIES: [(&str, &str); 4] =
    [("p50", "#2b8a3e"), ("p90", "#1971c2"), ("p99", "#e8590c"), ("p99.9", "#c92a2a")];

fn pick(p: &Percentiles, i: usize) -> f64 {
    [p.p50_ns, p.p90_ns, p.p99_ns, p.p999_ns][i]
}

/// Maps a time to x within the plot area.
fn x_of(range: TimeRange, t: i64) -> f64 {
    let span = (range.end_ns - range.start_ns).max(1) as f64;
    MARGIN.0 + (WIDTH - MARGIN.0 - MARGIN.1) * ((t - range.start_ns) as f64 / span).clamp(0.0, 1.0)
}

/// Time ticks: about six, at whole multiples of a round step, labelled `HH:MM` (UTC).
fn time_ticks(range: TimeRange) -> Vec<(i64, String)> {
    const STEPS_S: [i64; 10] = [10, 30, 60, 300, 600, 1_800, 3_600, 3 * 3_600, 6 * 3_600, 24 * 3_600];
    let span_s = (range.end_ns - range.start_ns) / 1_000_000_000;
    let step_s = STEPS_S.iter().copied().find(|s| span_s / s <= 6).unwrap_or(7 * 24 * 3_600);
    let step = step_s * 1_000_000_000;
    let mut t = range.start_ns.div_euclid(step) * step;
    let mut ticks = Vec::new();
    while t <= range.end_ns {
        if t >= range.start_ns {
            let text = hopscope_schemas::time::format_time(t);
            let label = if step_s < 60 { text.get(11..19) } else { text.get(11..16) };
            ticks.push((t, label.unwrap_or(&text).to_owned()));
        }
        t += step;
    }
    ticks
}

fn time_axis(range: TimeRange) -> Markup {
    let y = HEIGHT - MARGIN.3;
    html! {
        line.axis x1=(MARGIN.0) y1=(y) x2=(WIDTH - MARGIN.1) y2=(y) {}
        @for (t, label) in time_ticks(range) {
            line.tick x1=(x_of(range, t)) y1=(y) x2=(x_of(range, t)) y2=(y + 4.0) {}
            text.tick-label x=(x_of(range, t)) y=(y + 16.0) text-anchor="middle" { (label) }
        }
    }
}

/// A log-scale latency axis over whole decades covering `[lo, hi]`.
struct LogAxis {
    lo_exp: i32,
    hi_exp: i32,
}

impl LogAxis {
    fn new(lo: f64, hi: f64) -> Self {
        let lo_exp = lo.max(1.0).log10().floor() as i32;
        let hi_exp = (hi.max(1.0).log10().ceil() as i32).max(lo_exp + 1);
        LogAxis { lo_exp, hi_exp }
    }

    fn y(&self, ns: f64) -> f64 {
        let frac = (ns.max(1.0).log10() - f64::from(self.lo_exp)) / f64::from(self.hi_exp - self.lo_exp);
        HEIGHT - MARGIN.3 - (HEIGHT - MARGIN.2 - MARGIN.3) * frac.clamp(0.0, 1.0)
    }

    fn render(&self) -> Markup {
        html! {
            line.axis x1=(MARGIN.0) y1=(MARGIN.2) x2=(MARGIN.0) y2=(HEIGHT - MARGIN.3) {}
            @for exp in self.lo_exp..=self.hi_exp {
                @let ns = 10f64.powi(exp);
                line.grid x1=(MARGIN.0) y1=(self.y(ns)) x2=(WIDTH - MARGIN.1) y2=(self.y(ns)) {}
                text.tick-label x=(MARGIN.0 - 6.0) y=(self.y(ns) + 4.0) text-anchor="end" { (duration(ns)) }
            }
        }
    }
}

/// p50/p90/p99/p99.9 per step, on a log scale: a widening gap between the lines is the tail.
pub(crate) fn percentiles_over_time(view: &LatencyView, range: TimeRange) -> Markup {
    let points: Vec<(i64, &Percentiles)> =
        view.series.iter().filter_map(|p| Some((parse_time(&p.time).ok()?, &p.percentiles))).collect();
    let lo = points.iter().map(|(_, p)| p.p50_ns).fold(f64::INFINITY, f64::min);
    let hi = points.iter().map(|(_, p)| p.p999_ns).fold(0.0, f64::max);
    let axis = LogAxis::new(if lo.is_finite() { lo } else { 1e6 }, hi);
    // Each point sits in the middle of its step.
    let half_step = view.step_ns / 2;
    html! {
        figure.chart {
            figcaption { "Percentiles over time (log scale)" }
            svg.percentiles role="img" aria-label="latency percentiles over time" viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) width=(WIDTH) height=(HEIGHT) {
                (axis.render())
                (time_axis(range))
                @for (i, (name, colour)) in SERIES.iter().enumerate() {
                    @let coords: Vec<String> = points.iter().map(|(t, p)| format!("{:.1},{:.1}", x_of(range, t + half_step), axis.y(pick(p, i)))).collect();
                    polyline.series data-series=(name) fill="none" stroke=(colour) stroke-width="1.8" points=(coords.join(" ")) {}
                    @if points.len() <= 60 {
                        @for (t, p) in &points {
                            circle data-series=(name) cx=(format!("{:.1}", x_of(range, t + half_step))) cy=(format!("{:.1}", axis.y(pick(p, i)))) r="2.5" fill=(colour) {
                                title { (name) " " (duration(pick(p, i))) }
                            }
                        }
                    }
                }
            }
            p.legend {
                @for (name, colour) in SERIES {
                    span.swatch style=(format!("background:{colour}")) {} (name) " "
                }
            }
        }
    }
}

/// Sequential colour for a count among `max`: light yellow to dark red, on a log scale.
fn heat_colour(count: u64, max: u64) -> String {
    let frac = if max <= 1 { 1.0 } else { (count as f64).ln_1p() / (max as f64).ln_1p() };
    let hue = 55.0 - 55.0 * frac;
    let light = 88.0 - 50.0 * frac;
    format!("hsl({hue:.0},90%,{light:.0}%)")
}

/// Calls per (time step × latency bucket): where the mass sits, and how often the tail fires.
/// The cells are drawn as one path per colour (a few dozen shapes where a cell each made the
/// browser spend most of a latency page's drawing time on them), and the grid is described on the
/// drawing for the script: `data-columns` (each step's start in ns and its x), `data-rows` (each
/// bucket's bounds in ns and its label, from the lowest bucket up), `data-cells` (column, row and
/// count of each cell with calls), and the cell size. The script shows a cell's count on hover,
/// and with `compare` (the link to the comparison of the target's calls, without a selection)
/// opens the comparison of a clicked cell's calls, or of a region dragged across cells.
pub(crate) fn heatmap(view: &LatencyView, range: TimeRange, compare: Option<&str>) -> Markup {
    let cells: Vec<(i64, i32, u64)> =
        view.heatmap.iter().filter_map(|c| Some((parse_time(&c.time).ok()?, c.bucket, c.count))).collect();
    let (lo, hi) = cells.iter().fold((i32::MAX, i32::MIN), |(lo, hi), c| (lo.min(c.1), hi.max(c.1)));
    let max = cells.iter().map(|c| c.2).max().unwrap_or(1);
    let rows = if cells.is_empty() { 1 } else { (hi - lo + 1) as usize };
    let plot_h = HEIGHT - MARGIN.2 - MARGIN.3;
    let row_h = plot_h / rows as f64;
    let cell_w = (x_of(range, range.start_ns + view.step_ns) - x_of(range, range.start_ns)).max(1.0);
    let bottom = HEIGHT - MARGIN.3;
    let y_of = |bucket: i32| bottom - row_h * f64::from(bucket - lo + 1);
    // The grid: columns are the steps that have cells, in time order.
    let columns: Vec<i64> = cells.iter().map(|c| c.0).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
    let column_of: std::collections::HashMap<i64, usize> = columns.iter().enumerate().map(|(j, t)| (*t, j)).collect();
    let mut shapes: std::collections::BTreeMap<String, String> = std::collections::BTreeMap::new();
    let mut listed = Vec::with_capacity(cells.len());
    for (t, bucket, count) in &cells {
        let d = shapes.entry(heat_colour(*count, max)).or_default();
        d.push_str(&format!(
            "M{:.1},{:.1}h{cell_w:.1}v{:.1}h-{cell_w:.1}z",
            x_of(range, *t),
            y_of(*bucket),
            row_h.max(1.0)
        ));
        listed.push(format!("{}:{}:{count}", column_of[t], bucket - lo));
    }
    let column_list: Vec<String> = columns.iter().map(|t| format!("{t}:{:.1}", x_of(range, *t))).collect();
    let row_list: Vec<String> = if cells.is_empty() {
        Vec::new()
    } else {
        (lo..=hi)
            .map(|b| {
                let (lower, upper) = (bucket_lower_ns(b), bucket_upper_ns(b));
                format!("{lower},{upper},{}–{}", duration(lower as f64), duration(upper as f64))
            })
            .collect()
    };
    // Label about six rows.
    let label_every = rows.div_ceil(6).max(1);
    html! {
        figure.chart.heat {
            figcaption { "Heatmap: calls per time step and latency bucket" }
            svg.heatmap role="img" aria-label="latency heatmap" viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) width=(WIDTH) height=(HEIGHT) data-compare=[compare]
                data-step=(view.step_ns) data-cell-w=(format!("{cell_w:.1}")) data-row-h=(format!("{row_h:.3}")) data-bottom=(bottom)
                data-columns=(column_list.join(" ")) data-rows=(row_list.join("|")) data-cells=(listed.join(" ")) {
                line.axis x1=(MARGIN.0) y1=(MARGIN.2) x2=(MARGIN.0) y2=(bottom) {}
                @if !cells.is_empty() {
                    @for bucket in (lo..=hi).step_by(label_every) {
                        text.tick-label x=(MARGIN.0 - 6.0) y=(y_of(bucket) + row_h / 2.0 + 4.0) text-anchor="end" { (duration(bucket_lower_ns(bucket) as f64)) }
                    }
                }
                @for (fill, d) in &shapes {
                    path.cells fill=(fill) d=(d) {}
                }
                (time_axis(range))
            }
            div.heat-tip role="tooltip" hidden {}
        }
    }
}

/// How many calls fell in each log-scale latency bucket (4 buckets per doubling).
pub(crate) fn histogram(view: &LatencyView) -> Markup {
    let buckets = &view.histogram;
    let max = buckets.iter().map(|b| b.count).max().unwrap_or(1).max(1);
    let plot_w = WIDTH - MARGIN.0 - MARGIN.1;
    let bar_w = plot_w / buckets.len().max(1) as f64;
    let plot_h = HEIGHT - MARGIN.2 - MARGIN.3;
    let label_every = buckets.len().div_ceil(8).max(1);
    html! {
        figure.chart {
            figcaption { "Histogram (log-scale buckets)" }
            svg.histogram role="img" aria-label="latency histogram" viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) width=(WIDTH) height=(HEIGHT) {
                line.axis x1=(MARGIN.0) y1=(HEIGHT - MARGIN.3) x2=(WIDTH - MARGIN.1) y2=(HEIGHT - MARGIN.3) {}
                text.tick-label x=(MARGIN.0 - 6.0) y=(MARGIN.2 + 8.0) text-anchor="end" { (max) }
                text.tick-label x=(MARGIN.0 - 6.0) y=(HEIGHT - MARGIN.3) text-anchor="end" { "0" }
                @for (i, b) in buckets.iter().enumerate() {
                    @let h = plot_h * b.count as f64 / max as f64;
                    @let x = MARGIN.0 + bar_w * i as f64;
                    rect.bar data-count=(b.count) x=(format!("{:.1}", x + 0.5)) y=(format!("{:.1}", HEIGHT - MARGIN.3 - h)) width=(format!("{:.1}", (bar_w - 1.0).max(0.5))) height=(format!("{:.1}", h)) {
                        title { (b.count) " calls of " (duration(b.lower_ns as f64)) "–" (duration(b.upper_ns as f64)) }
                    }
                    @if i % label_every == 0 {
                        text.tick-label x=(format!("{:.1}", x)) y=(HEIGHT - MARGIN.3 + 16.0) { (duration(b.lower_ns as f64)) }
                    }
                }
            }
        }
    }
}

/// The percentiles of several distributions side by side (a hop's client, server and gap), as
/// horizontal bars on one log scale.
pub(crate) fn side_by_side(rows: &[(&str, Option<&Percentiles>)]) -> Markup {
    let hi = rows.iter().filter_map(|(_, p)| *p).map(|p| p.p999_ns).fold(1.0, f64::max);
    let scale = |ns: f64| if ns <= 0.0 { 0.0 } else { 100.0 * ns.max(1.0).log10() / hi.log10().max(1.0) };
    html! {
        table.side-by-side {
            thead { tr { th { } @for (name, _) in SERIES { th { (name) } } } }
            tbody {
                @for (label, p) in rows {
                    tr data-distribution=(label) {
                        th { (label) }
                        @for (i, (_, colour)) in SERIES.iter().enumerate() {
                            td {
                                @if let Some(p) = p {
                                    span.bar-value { (duration(pick(p, i))) }
                                    span.hbar style=(format!("width:{:.1}%;background:{colour}", scale(pick(p, i)))) {}
                                } @else { span.none { "–" } }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_ticks_are_round_and_inside_the_range() {
        let hour = 3_600 * 1_000_000_000i64;
        let range = TimeRange { start_ns: 1_764_000_000_000_000_000 + 7, end_ns: 1_764_000_000_000_000_000 + hour };
        let ticks = time_ticks(range);
        assert!((4..=7).contains(&ticks.len()), "{ticks:?}");
        for (t, label) in &ticks {
            assert!((range.start_ns..=range.end_ns).contains(t));
            assert_eq!(t % (600 * 1_000_000_000), 0, "{label}");
        }
    }

    #[test]
    fn the_heatmap_describes_every_cell_it_draws() {
        use hopscope_schemas::api::{HeatmapCell, PercentileAccuracy, Predictability};
        let minute = 60_000_000_000i64;
        let t0 = 1_764_000_000_000_000_000i64;
        let range = TimeRange { start_ns: t0, end_ns: t0 + 4 * minute };
        let cell = |t: i64, bucket: i32, count: u64| HeatmapCell {
            time: hopscope_schemas::time::format_time(t),
            bucket,
            count,
        };
        let zero = Percentiles { p50_ns: 0.0, p90_ns: 0.0, p99_ns: 0.0, p999_ns: 0.0 };
        let view = LatencyView {
            start: String::new(),
            end: String::new(),
            step_ns: minute,
            percentiles: PercentileAccuracy { method: "exact", relative_error: 0.0 },
            series: vec![],
            histogram: vec![],
            heatmap: vec![cell(t0, 40, 1), cell(t0, 42, 7), cell(t0 + 2 * minute, 40, 7)],
            summary: Predictability {
                count: 15,
                mean_ns: 0.0,
                stddev_ns: 0.0,
                percentiles: zero,
                p99_over_p50: None,
                coefficient_of_variation: None,
            },
        };
        let page = heatmap(&view, range, Some("/ui/compare?service=a")).into_string();
        let attribute = |name: &str| {
            let at = page.find(&format!(" {name}=\"")).unwrap_or_else(|| panic!("no {name}: {page}")) + name.len() + 3;
            page[at..at + page[at..].find('"').unwrap()].to_owned()
        };
        // Two columns (the steps with cells), three rows (buckets 40 to 42), three cells.
        let columns = attribute("data-columns");
        assert_eq!(columns, format!("{t0}:64.0 {}:{:.1}", t0 + 2 * minute, x_of(range, t0 + 2 * minute)));
        let rows: Vec<String> = attribute("data-rows").split('|').map(str::to_owned).collect();
        assert_eq!(rows.len(), 3);
        assert!(rows[0].starts_with(&format!("{},{},", bucket_lower_ns(40), bucket_upper_ns(40))), "{rows:?}");
        assert_eq!(attribute("data-cells"), "0:0:1 0:2:7 1:0:7");
        // Drawn as one path per colour: the two cells of 7 calls share one.
        let shapes: Vec<&str> = page.split("<path class=\"cells\"").skip(1).collect();
        assert_eq!(shapes.len(), 2, "{page}");
        // Each cell is drawn where the grid puts it: its column's x, its row's top.
        let mut drawn: Vec<String> = shapes
            .iter()
            .flat_map(|shape| shape[..shape.find('>').unwrap()].split('M').skip(1))
            .map(|cell| cell[..cell.find('h').unwrap()].to_owned())
            .collect();
        drawn.sort();
        let (bottom, row_h): (f64, f64) =
            (attribute("data-bottom").parse().unwrap(), attribute("data-row-h").parse().unwrap());
        let xs: Vec<&str> = columns.split(' ').map(|c| c.split(':').nth(1).unwrap()).collect();
        let mut described: Vec<String> = attribute("data-cells")
            .split(' ')
            .map(|c| {
                let [j, r, _]: [usize; 3] =
                    c.split(':').map(|v| v.parse().unwrap()).collect::<Vec<_>>().try_into().unwrap();
                format!("{},{:.1}", xs[j], bottom - (r as f64 + 1.0) * row_h)
            })
            .collect();
        described.sort();
        assert_eq!(drawn, described);
    }

    #[test]
    fn log_axis_covers_whole_decades() {
        let axis = LogAxis::new(3_000.0, 2_500_000.0);
        assert_eq!((axis.lo_exp, axis.hi_exp), (3, 7));
        assert_eq!(axis.y(1e3), HEIGHT - MARGIN.3);
        assert_eq!(axis.y(1e7), MARGIN.2);
    }
}
