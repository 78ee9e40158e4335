//! Terminal output: aligned tables, colour only on a terminal, JSON and YAML for scripts.

use std::io::IsTerminal;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::Format;

/// Prints `value` as JSON or YAML; false when the format is a table (the caller prints it).
pub fn structured<T: Serialize>(format: Format, value: &T) -> anyhow::Result<bool> {
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Format::Yaml => print!("{}", serde_yaml::to_string(value)?),
        Format::Table => return Ok(false),
    }
    Ok(true)
}

/// Columns padded to their widest cell; the last column is not padded.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(visible_len(cell));
        }
    }
    let line = |cells: Vec<String>| {
        let last = cells.len().saturating_sub(1);
        let mut out = String::new();
        for (i, c) in cells.into_iter().enumerate() {
            out.push_str(&c);
            if i < last {
                out.push_str(&" ".repeat(widths[i] - visible_len(&c) + 2));
            }
        }
        out.trim_end().to_string()
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect()) + "\n";
    for row in rows {
        out += &(line(row.clone()) + "\n");
    }
    out
}

/// Length without ANSI colour codes.
fn visible_len(s: &str) -> usize {
    let mut n = 0;
    let mut in_escape = false;
    for c in s.chars() {
        match (in_escape, c) {
            (false, '\x1b') => in_escape = true,
            (true, 'm') => in_escape = false,
            (false, _) => n += 1,
            _ => {}
        }
    }
    n
}

pub fn colour_enabled() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// A phase, coloured on a terminal: green for success, red for failure, yellow for waiting.
pub fn phase(p: &str) -> String {
    if !colour_enabled() {
        return p.to_string();
    }
    let code = match p {
        "SUCCEEDED" => "32",
        "FAILED" => "31",
        "RUNNING" | "STARTING" => "36",
        _ => "33",
    };
    format!("\x1b[{code}m{p}\x1b[0m")
}

/// "3m12s"-style age of a timestamp.
pub fn age(t: Option<DateTime<Utc>>) -> String {
    let Some(t) = t else { return "-".into() };
    duration((Utc::now() - t).num_seconds().max(0))
}

pub fn duration(secs: i64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d{}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// `[#######.......]  7/15` — a text progress bar of `width` cells.
pub fn bar(done: u64, failed: u64, total: u64, width: usize) -> String {
    let total = total.max(1);
    let filled = ((done + failed) as f64 / total as f64 * width as f64).round() as usize;
    let bad = ((failed as f64 / total as f64) * width as f64).round() as usize;
    let good = filled.saturating_sub(bad).min(width);
    let bad = bad.min(width - good);
    let (g, r) = if colour_enabled() { ("\x1b[32m", "\x1b[31m") } else { ("", "") };
    let reset = if colour_enabled() { "\x1b[0m" } else { "" };
    format!("[{g}{}{reset}{r}{}{reset}{}]", "#".repeat(good), "x".repeat(bad), ".".repeat(width - good - bad))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_and_bars_fill_in_proportion() {
        let t = table(&["A", "LONG"], &[vec!["xyz".into(), "1".into()], vec!["q".into(), "22".into()]]);
        assert_eq!(t, "A    LONG\nxyz  1\nq    22\n");
        assert_eq!(bar(5, 0, 10, 10), "[#####.....]");
        assert_eq!(bar(8, 2, 10, 10), "[########xx]");
        assert_eq!(duration(3725), "1h2m");
    }
}
