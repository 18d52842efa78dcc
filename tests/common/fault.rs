//! A fault-injecting HTTP proxy for the remote tests: forwards each request to an
//! upstream server on its own connection and, on every `every`-th GET of a container
//! (`….dcz`), answers with a fault instead: a 503, a body cut short, a connection reset
//! after the headers, a delay, or (when `flips`) one flipped bit in the body. Or, made by
//! [`FaultProxy::unavailable`], a 503 for each of the first N container GETs.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub struct FaultProxy {
    pub port: u16,
    pub faults: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    Unavailable,
    Truncate,
    Reset,
    Delay,
    Flip,
}

/// What the proxy does to container GETs.
#[derive(Clone, Copy, Debug)]
enum Plan {
    /// Every `every`-th gets a fault of a rotating kind (flipped bits among them if set).
    Every { every: u64, flips: bool },
    /// The first `n` get a 503, the rest pass (`u64::MAX`: all of them).
    Unavailable { n: u64 },
}

impl FaultProxy {
    pub fn start(upstream: u16, every: u64, flips: bool) -> FaultProxy {
        Self::with_plan(upstream, Plan::Every { every, flips })
    }

    /// Answers the first `n` container GETs with 503 Service Unavailable and passes the
    /// rest; `u64::MAX` makes the store permanently unavailable.
    pub fn unavailable(upstream: u16, n: u64) -> FaultProxy {
        Self::with_plan(upstream, Plan::Unavailable { n })
    }

    fn with_plan(upstream: u16, plan: Plan) -> FaultProxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let faults = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (f2, s2) = (faults.clone(), stop.clone());
        let counter = Arc::new(AtomicU64::new(0));
        std::thread::spawn(move || {
            for c in l.incoming() {
                if s2.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(c) = c else { continue };
                let (f3, n3) = (f2.clone(), counter.clone());
                std::thread::spawn(move || {
                    let _ = serve(c, upstream, plan, &n3, &f3);
                });
            }
        });
        FaultProxy { port, faults, stop }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Reads one HTTP head (through the blank line).
fn read_head(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.push(b[0]);
        if head.len() > 64 << 10 {
            return Err(std::io::ErrorKind::InvalidData.into());
        }
    }
    Ok(head)
}

fn content_length(head: &[u8]) -> usize {
    String::from_utf8_lossy(head)
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0)
}

/// One request per connection: the client reconnects for the next.
fn serve(mut c: TcpStream, upstream: u16, plan: Plan, n: &AtomicU64, faults: &AtomicU64) -> std::io::Result<()> {
    let head = read_head(&mut c)?;
    let text = String::from_utf8_lossy(&head).into_owned();
    let first = text.lines().next().unwrap_or_default().to_string();
    let is_get_dcz = first.starts_with("GET ") && first.split(' ').nth(1).is_some_and(|p| p.ends_with(".dcz"));
    // Ask upstream to close after its answer, so the response ends with the connection.
    let mut req: String = text
        .split("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .collect::<Vec<_>>()
        .join("\r\n");
    req.truncate(req.trim_end().len());
    req.push_str("\r\nConnection: close\r\n\r\n");
    let mut u = TcpStream::connect(("127.0.0.1", upstream))?;
    u.write_all(req.as_bytes())?;
    let rhead = read_head(&mut u)?;
    let len = if first.starts_with("HEAD ") {
        0
    } else {
        content_length(&rhead)
    };
    let mut body = vec![0u8; len];
    u.read_exact(&mut body)?;
    let fault = match plan {
        _ if !is_get_dcz => None,
        Plan::Unavailable { n: limit } => (n.fetch_add(1, Ordering::Relaxed) < limit).then(|| {
            faults.fetch_add(1, Ordering::Relaxed);
            Fault::Unavailable
        }),
        Plan::Every { every, flips } => pick(every, flips, n, faults),
    };
    let rhead = String::from_utf8_lossy(&rhead)
        .split("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .collect::<Vec<_>>()
        .join("\r\n");
    let rhead = format!("{}\r\nConnection: close\r\n\r\n", rhead.trim_end());
    match fault {
        None | Some(Fault::Delay) => {
            if fault.is_some() {
                std::thread::sleep(Duration::from_millis(300));
            }
            c.write_all(rhead.as_bytes())?;
            c.write_all(&body)?;
        }
        Some(Fault::Unavailable) => {
            c.write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
        }
        Some(Fault::Truncate) => {
            c.write_all(rhead.as_bytes())?;
            c.write_all(&body[..body.len() / 2])?;
        }
        Some(Fault::Reset) => {
            c.write_all(rhead.as_bytes())?;
        }
        Some(Fault::Flip) => {
            if !body.is_empty() {
                let at = body.len() / 3;
                body[at] ^= 0x10;
            }
            c.write_all(rhead.as_bytes())?;
            c.write_all(&body)?;
        }
    }
    c.flush()?;
    c.shutdown(Shutdown::Both)
}

/// For [`Plan::Every`]: whether this container GET gets a fault, and which.
fn pick(every: u64, flips: bool, n: &AtomicU64, faults: &AtomicU64) -> Option<Fault> {
    if (n.fetch_add(1, Ordering::Relaxed) + 1) % every != 0 {
        return None;
    }
    let kinds: &[Fault] = if flips {
        &[
            Fault::Flip,
            Fault::Unavailable,
            Fault::Truncate,
            Fault::Reset,
            Fault::Delay,
        ]
    } else {
        &[Fault::Unavailable, Fault::Truncate, Fault::Reset, Fault::Delay]
    };
    Some(kinds[(faults.fetch_add(1, Ordering::Relaxed) as usize) % kinds.len()])
}
