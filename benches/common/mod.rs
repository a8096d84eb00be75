//! What every benchmark shares: recording results in docs/benchmarks.md.

use crate::support::repo_root;

/// What the file says before its sections.
const HEADER: &str = "Produced by `make bench`; each section is rewritten when its benchmark runs. \
The machine is a shared 2-core VM: on repeated runs the same code has varied by ±30 % (latencies \
and fsync-bound figures more), so a figure near its goal can land on either side of it.";

/// Replaces (or appends) the `## <title>` section of docs/benchmarks.md, recording the machine.
pub fn write_benchmark_section(title: &str, section: &str) {
    let path = repo_root().join("docs/benchmarks.md");
    let existing =
        std::fs::read_to_string(&path).unwrap_or_else(|_| format!("# Benchmarks\n\n{HEADER}\n\n"));
    let machine = machine_description();
    let section = format!("{}\n\nMachine: {machine}.\n\n", section.trim_end());
    let heading = format!("## {title}\n");
    let updated = match existing.find(&heading) {
        Some(start) => {
            let end = existing[start + heading.len()..]
                .find("\n## ")
                .map(|i| start + heading.len() + i + 1)
                .unwrap_or(existing.len());
            format!("{}{}{}", &existing[..start], section, &existing[end..])
        }
        None => format!("{}\n\n{section}", existing.trim_end()),
    };
    std::fs::write(&path, updated).unwrap();
}

fn machine_description() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|kb| kb / 1024 / 1024)
        .unwrap_or(0);
    let date = std::process::Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!("{cpu}, {cores} cores, {mem_gib} GiB, measured {date}")
}

/// One vertical axis of a plot: its label and its named series of (x, y) points.
pub struct Axis<'a> {
    pub label: &'a str,
    pub series: Vec<(&'a str, Vec<(f64, f64)>)>,
}

impl Axis<'_> {
    fn max(&self) -> f64 {
        self.series
            .iter()
            .flat_map(|(_, points)| points.iter().map(|p| p.1))
            .fold(f64::MIN_POSITIVE, f64::max)
            * 1.1
    }
}

/// Draws the series of `left` (and of `right`, on a second scale) against `x_label` into the
/// SVG file `path` (relative to the repository), points joined by lines, with a legend.
pub fn plot(path: &str, title: &str, x_label: &str, left: Axis, right: Option<Axis>) {
    use plotters::prelude::*;

    let file = repo_root().join(path);
    let root = SVGBackend::new(&file, (760, 440)).into_drawing_area();
    root.fill(&WHITE).unwrap();
    let x_max = left
        .series
        .iter()
        .chain(right.iter().flat_map(|axis| axis.series.iter()))
        .flat_map(|(_, points)| points.iter().map(|p| p.0))
        .fold(f64::MIN_POSITIVE, f64::max)
        * 1.05;
    let right_max = right.as_ref().map(Axis::max).unwrap_or(1.0);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .right_y_label_area_size(if right.is_some() { 60 } else { 0 })
        .build_cartesian_2d(0.0..x_max, 0.0..left.max())
        .unwrap()
        .set_secondary_coord(0.0..x_max, 0.0..right_max);
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(left.label)
        .draw()
        .unwrap();
    if let Some(axis) = &right {
        chart
            .configure_secondary_axes()
            .y_desc(axis.label)
            .draw()
            .unwrap();
    }
    let colours = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
    let mut colour = colours.iter().cycle();
    for (name, points) in &left.series {
        let c = *colour.next().unwrap_or(&BLACK);
        chart
            .draw_series(LineSeries::new(points.clone(), c.stroke_width(2)).point_size(4))
            .unwrap()
            .label(*name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    for (name, points) in right.iter().flat_map(|axis| axis.series.iter()) {
        let c = *colour.next().unwrap_or(&BLACK);
        chart
            .draw_secondary_series(LineSeries::new(points.clone(), c.stroke_width(2)).point_size(4))
            .unwrap()
            .label(format!("{name} (right scale)"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .unwrap();
    root.present().unwrap();
}
