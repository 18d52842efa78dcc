//! Shared CLI helpers: logging, progress bars, sizes, thread counts.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use indicatif::{HumanBytes, ProgressBar, ProgressStyle};

pub fn init_logging() {
    init_logging_to(LogTarget::Stderr, "warn");
}

/// Where log lines go. The mount daemon has no terminal, so it logs to syslog or a file.
pub enum LogTarget {
    Stderr,
    /// RFC 3164 lines on the local syslog datagram socket (journald and rsyslog read it).
    Syslog,
    /// Appended to an open file (see [`open_log_file`]).
    File(std::fs::File),
}

/// Installs the process-wide subscriber; `default` is the filter when RUST_LOG is unset.
pub fn init_logging_to(target: LogTarget, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default.into());
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_target(false);
    let _ = match target {
        LogTarget::Stderr => b.with_writer(std::io::stderr).try_init(),
        LogTarget::File(f) => b.with_ansi(false).with_writer(std::sync::Mutex::new(f)).try_init(),
        // syslog stamps its own time.
        LogTarget::Syslog => b
            .with_ansi(false)
            .without_time()
            .with_level(false)
            .with_writer(SyslogWriter::new())
            .try_init(),
    };
}

/// Opens (creating it 0600) a log file for appending; never follows a link as its last
/// component, so a planted symlink cannot redirect the daemon's writes.
pub fn open_log_file(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// The syslog socket: /dev/log, or `DCFS_SYSLOG_SOCKET` (tests bind their own).
pub fn syslog_socket_path() -> std::path::PathBuf {
    std::env::var_os("DCFS_SYSLOG_SOCKET").map_or_else(|| "/dev/log".into(), Into::into)
}

/// Sends each event as one syslog datagram (facility daemon, severity from its level).
#[derive(Clone)]
pub struct SyslogWriter {
    sock: std::sync::Arc<std::sync::Mutex<Option<std::os::unix::net::UnixDatagram>>>,
    path: std::path::PathBuf,
    pid: u32,
}

impl SyslogWriter {
    pub fn new() -> SyslogWriter {
        SyslogWriter {
            sock: Default::default(),
            path: syslog_socket_path(),
            pid: std::process::id(),
        }
    }

    /// One RFC 3164 line: `<PRI>Mmm dd hh:mm:ss dcfs[PID]: MSG`.
    fn line(&self, severity: u8, msg: &str) -> Vec<u8> {
        const DAEMON: u8 = 3;
        let msg = msg.trim_end().replace('\n', " ");
        format!("<{}>{} dcfs[{}]: {msg}", DAEMON * 8 + severity, syslog_time(), self.pid).into_bytes()
    }

    fn send(&self, line: &[u8]) {
        let mut g = self.sock.lock().unwrap_or_else(|e| e.into_inner());
        // Reconnect once: syslog may have restarted since the last line.
        for _ in 0..2 {
            if g.is_none() {
                *g = std::os::unix::net::UnixDatagram::unbound().ok();
            }
            match g.as_ref().map(|s| s.send_to(line, &self.path)) {
                Some(Ok(_)) => return,
                _ => *g = None,
            }
        }
    }
}

impl Default for SyslogWriter {
    fn default() -> Self {
        Self::new()
    }
}

/// Local time as syslog writes it (`Nov 30 17:05:09`).
fn syslog_time() -> String {
    const MON: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    // SAFETY: time(NULL) is always valid; localtime_r writes only into the zeroed tm we own.
    let tm = unsafe {
        let t = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        libc::localtime_r(&t, &mut tm);
        tm
    };
    let mon = MON.get(tm.tm_mon as usize).copied().unwrap_or("Jan");
    format!(
        "{mon} {:>2} {:02}:{:02}:{:02}",
        tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec
    )
}

/// Collects one formatted event and sends it when dropped.
pub struct SyslogLine {
    w: SyslogWriter,
    severity: u8,
    buf: Vec<u8>,
}

impl std::io::Write for SyslogLine {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for SyslogLine {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            let line = self.w.line(self.severity, &String::from_utf8_lossy(&self.buf));
            self.w.send(&line);
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for SyslogWriter {
    type Writer = SyslogLine;
    fn make_writer(&'a self) -> SyslogLine {
        self.make_line(6)
    }
    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> SyslogLine {
        let severity = match *meta.level() {
            tracing::Level::ERROR => 3,
            tracing::Level::WARN => 4,
            tracing::Level::INFO => 6,
            _ => 7,
        };
        self.make_line(severity)
    }
}

impl SyslogWriter {
    fn make_line(&self, severity: u8) -> SyslogLine {
        SyslogLine {
            w: self.clone(),
            severity,
            buf: Vec::new(),
        }
    }
}

/// Layout version stamped on every `--json` output as `schema_version`; raised when a field
/// changes meaning or goes (adding one does not), so scripts can refuse what they don't know.
pub const JSON_SCHEMA_VERSION: u32 = 1;

/// `v` as JSON with `schema_version` added (every command's `--json` output is an object).
pub fn json_text<T: serde::Serialize>(v: &T, pretty: bool) -> anyhow::Result<String> {
    let mut v = serde_json::to_value(v)?;
    if let Some(o) = v.as_object_mut() {
        o.insert("schema_version".into(), JSON_SCHEMA_VERSION.into());
    }
    Ok(if pretty {
        serde_json::to_string_pretty(&v)?
    } else {
        v.to_string()
    })
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

/// Progress on stderr: a bar on a terminal; elsewhere (CI logs, cron, redirected ssh) one
/// plain line at most every [`PLAIN_EVERY`], so long work is not silent; nothing when
/// `hidden` (JSON output).
pub struct Bar {
    bar: ProgressBar,
    plain: Option<Plain>,
}

/// Least time between two plain progress lines.
pub const PLAIN_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

struct Plain {
    total: AtomicU64,
    done: AtomicU64,
    state: Mutex<PlainState>,
}

struct PlainState {
    last: Instant,
    msg: String,
}

impl Plain {
    /// The line to print now, if one is due.
    fn due(&self, now: Instant) -> Option<String> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if now.duration_since(st.last) < PLAIN_EVERY {
            return None;
        }
        st.last = now;
        let (done, total) = (self.done.load(Ordering::Relaxed), self.total.load(Ordering::Relaxed));
        let pct = if total == 0 {
            0.0
        } else {
            100.0 * done as f64 / total as f64
        };
        let msg = if st.msg.is_empty() {
            String::new()
        } else {
            format!(" {}", st.msg)
        };
        Some(format!("dcfs: {} of {} ({pct:.0}%){msg}", human(done), human(total)))
    }
}

impl Bar {
    pub fn new(hidden: bool) -> Bar {
        Bar::with(hidden, std::io::stderr().is_terminal())
    }

    fn with(hidden: bool, terminal: bool) -> Bar {
        let plain = (!hidden && !terminal).then(|| Plain {
            total: AtomicU64::new(0),
            done: AtomicU64::new(0),
            // The first line comes after the first interval, not at once.
            state: Mutex::new(PlainState {
                last: Instant::now(),
                msg: String::new(),
            }),
        });
        let bar = if hidden || !terminal {
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
        Bar { bar, plain }
    }
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
    fn tick(&self) {
        if let Some(line) = self.plain.as_ref().and_then(|p| p.due(Instant::now())) {
            eprintln!("{line}");
        }
    }
}

impl dcfs::pack::Progress for Bar {
    fn set_total(&self, bytes: u64) {
        self.bar.set_length(bytes);
        if let Some(p) = &self.plain {
            p.total.store(bytes, Ordering::Relaxed);
        }
    }
    fn advance(&self, bytes: u64) {
        self.bar.inc(bytes);
        if let Some(p) = &self.plain {
            p.done.fetch_add(bytes, Ordering::Relaxed);
            self.tick();
        }
    }
    fn message(&self, msg: &str) {
        self.bar.set_message(msg.to_string());
        if let Some(p) = &self.plain {
            p.state.lock().unwrap_or_else(|e| e.into_inner()).msg = msg.to_string();
        }
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

    #[test]
    fn plain_progress_is_rate_limited_and_off_on_a_terminal_or_for_json() {
        use dcfs::pack::Progress;
        assert!(Bar::with(true, false).plain.is_none());
        assert!(Bar::with(false, true).plain.is_none());
        let b = Bar::with(false, false);
        b.set_total(4 << 20);
        b.message("model.safetensors");
        b.advance(1 << 20);
        let p = b.plain.as_ref().unwrap();
        let t0 = p.state.lock().unwrap().last;
        // Not before the interval, once after it, and not again straight away.
        assert_eq!(p.due(t0 + PLAIN_EVERY / 2), None);
        let line = p.due(t0 + PLAIN_EVERY).unwrap();
        assert_eq!(line, "dcfs: 1.00 MiB of 4.00 MiB (25%) model.safetensors");
        assert_eq!(p.due(t0 + PLAIN_EVERY + PLAIN_EVERY / 2), None);
        assert!(p.due(t0 + PLAIN_EVERY * 2).is_some());
    }

    #[test]
    fn syslog_lines_are_rfc3164_on_one_line() {
        let w = SyslogWriter::new();
        let l = String::from_utf8(w.line(3, "chunk 7 of a.bin: corrupt\nsecond line\n")).unwrap();
        assert!(l.starts_with("<27>"), "{l}");
        assert!(
            l.ends_with(&format!(
                " dcfs[{}]: chunk 7 of a.bin: corrupt second line",
                std::process::id()
            )),
            "{l}"
        );
        // `<27>Mmm dd hh:mm:ss `: the timestamp is 15 characters.
        assert_eq!(&l[4 + 15..4 + 16], " ", "{l}");
    }
}
