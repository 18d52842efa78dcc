//! Shared CLI helpers: logging, progress bars, sizes, thread counts.

use std::io::IsTerminal;

use indicatif::{HumanBytes, ProgressBar, ProgressStyle};

pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// The error and its causes on one line, without repeating a cause the message already has.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for c in e.chain().skip(1) {
        let s = c.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
    }
    out
}

/// Parses sizes such as `1M`, `256KiB`, `4096`, `1.5G` (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("not a size: {s:?} (try 1M, 256K, 4096)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        u => return Err(format!("unknown size unit {u:?} in {s:?}")),
    };
    Ok((n * mult as f64).round() as u64)
}

pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

pub fn human(n: u64) -> String {
    HumanBytes(n).to_string()
}

/// A byte progress bar on stderr, hidden when stderr is not a terminal or output is JSON.
pub struct Bar {
    bar: ProgressBar,
}

impl Bar {
    pub fn new(hidden: bool) -> Bar {
        let bar = if hidden || !std::io::stderr().is_terminal() {
            ProgressBar::hidden()
        } else {
            let b = ProgressBar::new(0);
            b.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} {msg}",
                )
                .expect("valid template"),
            );
            b
        };
        Bar { bar }
    }
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl dcfs::pack::Progress for Bar {
    fn set_total(&self, bytes: u64) {
        self.bar.set_length(bytes);
    }
    fn advance(&self, bytes: u64) {
        self.bar.inc(bytes);
    }
    fn message(&self, msg: &str) {
        self.bar.set_message(msg.to_string());
    }
    fn warn(&self, msg: &str) {
        self.bar.suspend(|| eprintln!("dcfs: warning: {msg}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("256KiB"), Ok(256 << 10));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("M").is_err());
    }
}
