//! What a benchmark run found, and how it is shown: [`Figure`]s (a measured value, optionally
//! against a baseline measured in the same run), printed as a table and written as JSON.
//!
//! Every figure keeps its per-repetition samples. A ratio is taken **per repetition** (the
//! windi sample of repetition *i* over the baseline sample of repetition *i*, which ran right
//! after it), then summarised by median, min and max, so machine drift between repetitions
//! falls on both sides of each ratio instead of on the figure.

// A toolkit for every scenario: not each build of the scenarios uses every helper.
#![allow(dead_code)]

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::Command,
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::Context;
use serde::Serialize;

/// Median, min and max of samples, with the samples themselves.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub samples: Vec<f64>,
}

impl Stats {
    /// Summarises `samples` (NaNs are kept out of the order statistics). An empty list gives
    /// NaN everywhere, which the table shows as "-" and JSON as `null`.
    pub fn of(samples: &[f64]) -> Self {
        let mut sorted: Vec<f64> = samples.iter().copied().filter(|v| !v.is_nan()).collect();
        sorted.sort_by(f64::total_cmp);
        Self {
            median: median_sorted(&sorted),
            min: sorted.first().copied().unwrap_or(f64::NAN),
            max: sorted.last().copied().unwrap_or(f64::NAN),
            samples: samples.to_vec(),
        }
    }
}

/// The median of already sorted values (the mean of the middle two for an even count).
fn median_sorted(sorted: &[f64]) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// The `q`-quantile (0..=1) of unsorted values, nearest rank; NaN for none. For latency
/// percentiles of one repetition (p50 = 0.5, p99 = 0.99, p99.9 = 0.999).
pub fn quantile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

/// Median, min and max of per-repetition ratios.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

/// What a figure is compared with: measured in the same run, interleaved with it.
#[derive(Debug, Clone, Serialize)]
pub struct Baseline {
    pub name: String,
    pub value: Stats,
}

/// A goal a figure is checked against (on the median).
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// The ratio to the baseline is at least this (throughput-like figures).
    RatioAtLeast(f64),
    /// The ratio to the baseline is at most this (cost-like figures).
    RatioAtMost(f64),
    /// The value itself is at most this, in the figure's unit (latency, memory).
    AtMost(f64),
    /// The value itself is at least this, in the figure's unit.
    AtLeast(f64),
}

/// One row of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub scenario: String,
    pub name: String,
    pub unit: String,
    pub value: Stats,
    pub baseline: Option<Baseline>,
    pub ratio: Option<Ratio>,
    pub target: Option<String>,
    pub met: Option<bool>,
    pub note: Option<String>,
}

impl Figure {
    /// A figure from its per-repetition samples.
    pub fn new(scenario: &str, name: impl Into<String>, unit: &str, samples: &[f64]) -> Self {
        Self {
            scenario: scenario.to_owned(),
            name: name.into(),
            unit: unit.to_owned(),
            value: Stats::of(samples),
            baseline: None,
            ratio: None,
            target: None,
            met: None,
            note: None,
        }
    }

    /// Adds the baseline's samples (one per repetition, in the same order as the figure's)
    /// and the per-repetition ratios value / baseline.
    pub fn against(mut self, name: impl Into<String>, samples: &[f64]) -> Self {
        let ratios: Vec<f64> = self
            .value
            .samples
            .iter()
            .zip(samples)
            .map(|(v, b)| v / b)
            .collect();
        let r = Stats::of(&ratios);
        self.ratio = Some(Ratio {
            median: r.median,
            min: r.min,
            max: r.max,
        });
        self.baseline = Some(Baseline {
            name: name.into(),
            value: Stats::of(samples),
        });
        self
    }

    /// Sets the goal and whether the median meets it. A ratio target on a figure without a
    /// baseline is not met (`met: null`): call [`Figure::against`] first.
    pub fn target(mut self, target: Target) -> Self {
        let ratio = self.ratio.as_ref().map(|r| r.median);
        let value = self.value.median;
        let (text, met) = match target {
            Target::RatioAtLeast(t) => (format!(">= {t} of baseline"), ratio.map(|r| r >= t)),
            Target::RatioAtMost(t) => (format!("<= {t} of baseline"), ratio.map(|r| r <= t)),
            Target::AtMost(t) => (format!("<= {t} {}", self.unit), Some(value <= t)),
            Target::AtLeast(t) => (format!(">= {t} {}", self.unit), Some(value >= t)),
        };
        self.target = Some(text);
        self.met = met;
        self
    }

    /// Free text: how it was measured, caveats, why a target is missed.
    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.note = Some(note.into());
        self
    }
}

/// The machine the figures were measured on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub memory_gib: u64,
    pub kernel: String,
    pub cpu: String,
}

impl Machine {
    /// From `/proc` (Linux); unknown fields are empty rather than an error.
    pub fn detect() -> Self {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let memory_kib: u64 = read("/proc/meminfo")
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        let cpu = read("/proc/cpuinfo")
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            .unwrap_or_default();
        Self {
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory_gib: memory_kib / (1024 * 1024),
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
            cpu,
        }
    }
}

/// The whole run, as written to JSON.
#[derive(Debug, Serialize)]
pub struct Report {
    pub git_revision: String,
    pub machine: Machine,
    pub started_at: String,
    pub quick: bool,
    pub reps: usize,
    pub figures: Vec<Figure>,
}

impl Report {
    pub fn new(repo: &Path, quick: bool, reps: usize) -> Self {
        Self {
            git_revision: git_revision(repo),
            machine: Machine::detect(),
            started_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            quick,
            reps,
            figures: Vec::new(),
        }
    }

    /// The figures as an aligned table: value median (min–max), baseline, ratio, target.
    pub fn table(&self) -> String {
        let header = [
            "scenario", "figure", "value", "baseline", "ratio", "target", "met",
        ];
        let rows: Vec<[String; 7]> = self
            .figures
            .iter()
            .map(|f| {
                [
                    f.scenario.clone(),
                    f.name.clone(),
                    format!(
                        "{} {}",
                        spread(&f.value.median, f.value.min, f.value.max),
                        f.unit
                    ),
                    f.baseline.as_ref().map_or_else(String::new, |b| {
                        format!(
                            "{}: {}",
                            b.name,
                            spread(&b.value.median, b.value.min, b.value.max)
                        )
                    }),
                    f.ratio
                        .as_ref()
                        .map_or_else(String::new, |r| spread(&r.median, r.min, r.max)),
                    f.target.clone().unwrap_or_default(),
                    match f.met {
                        Some(true) => "yes".into(),
                        Some(false) => "NO".into(),
                        None => String::new(),
                    },
                ]
            })
            .collect();
        let mut widths = header.map(str::len);
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let mut line = |cells: &[String]| {
            let padded: Vec<String> = cells
                .iter()
                .zip(widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            out.push_str(padded.join("  ").trim_end());
            out.push('\n');
        };
        line(&header.map(String::from));
        for row in &rows {
            line(row);
        }
        let notes: Vec<String> = self
            .figures
            .iter()
            .filter_map(|f| {
                f.note
                    .as_ref()
                    .map(|n| format!("- {} / {}: {n}", f.scenario, f.name))
            })
            .collect();
        if !notes.is_empty() {
            out.push_str("\nnotes:\n");
            out.push_str(&notes.join("\n"));
            out.push('\n');
        }
        out
    }

    /// Writes `<dir>/<unix-time>.json` and `<dir>/latest.json` (or just `out` when given).
    /// Answers the paths written.
    pub fn write(&self, dir: &Path, out: Option<&Path>) -> anyhow::Result<Vec<PathBuf>> {
        let json = serde_json::to_vec_pretty(&self)?;
        let paths = match out {
            Some(path) => vec![path.to_owned()],
            None => {
                let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
                vec![dir.join(format!("{now}.json")), dir.join("latest.json")]
            }
        };
        for path in &paths {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let mut file = std::fs::File::create(path)
                .with_context(|| format!("cannot write {}", path.display()))?;
            file.write_all(&json)?;
            file.write_all(b"\n")?;
        }
        Ok(paths)
    }
}

/// `median (min–max)` with as many decimals as the size of the number needs.
fn spread(median: &f64, min: f64, max: f64) -> String {
    if median.is_nan() {
        return "-".into();
    }
    if min == max {
        return number(*median);
    }
    format!("{} ({}–{})", number(*median), number(min), number(max))
}

fn number(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// `git rev-parse HEAD`, with `-dirty` when the tree has uncommitted changes; "unknown"
/// outside a checkout.
fn git_revision(repo: &Path) -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(repo)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    match git(&["rev-parse", "HEAD"]) {
        Some(rev) => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty { format!("{rev}-dirty") } else { rev }
        }
        None => "unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_take_the_middle_and_the_ends() {
        let s = Stats::of(&[3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Stats::of(&[1.0, 4.0]).median, 2.5);
        assert!(Stats::of(&[]).median.is_nan());
    }

    #[test]
    fn ratios_are_taken_per_repetition_then_summarised() {
        // Per-rep ratios 1.0, 0.5, 0.8: the median 0.8, not 13/21 of the totals.
        let f = Figure::new("send", "x", "msg/s", &[10.0, 1.0, 4.0])
            .against("b", &[10.0, 2.0, 5.0])
            .target(Target::RatioAtLeast(0.8));
        let r = f.ratio.as_ref().map(|r| (r.median, r.min, r.max));
        assert_eq!(r, Some((0.8, 0.5, 1.0)));
        assert_eq!(f.met, Some(true));
    }

    #[test]
    fn quantiles_use_the_nearest_rank() {
        let mut v: Vec<f64> = (1..=1000).map(f64::from).collect();
        assert_eq!(quantile(&mut v, 0.5), 500.0);
        assert_eq!(quantile(&mut v, 0.99), 990.0);
        assert_eq!(quantile(&mut v, 0.999), 999.0);
        assert_eq!(quantile(&mut v, 1.0), 1000.0);
    }
}
