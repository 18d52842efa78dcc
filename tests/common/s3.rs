//! A real S3 server for the remote tests: s3s-fs (`cargo install s3s-fs@0.14.1 --features
//! binary --locked`) over a temporary directory, on loopback, on a free port, with fresh
//! keys or anonymous. Found as $S3S_FS or `s3s-fs` on PATH; when missing the caller skips.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct S3Server {
    child: Child,
    pub port: u16,
    pub dir: PathBuf,
    /// (access key, secret key); `None` for an anonymous server.
    pub keys: Option<(String, String)>,
}

/// The s3s-fs binary, or `None` with the reason printed through `skip`.
pub fn s3s_fs() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("S3S_FS") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for d in std::env::split_paths(&path) {
        let p = d.join("s3s-fs");
        if p.is_file() {
            return Some(p);
        }
    }
    crate::common::skip("remote: s3s-fs not found (set S3S_FS or put it on PATH; `cargo install s3s-fs@0.14.1 --features binary --locked`)");
    None
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl S3Server {
    /// Starts a server over `dir` holding `buckets`; signed with fresh keys unless
    /// `anonymous`. `None` (skipped) when s3s-fs is not installed.
    pub fn start(dir: &Path, buckets: &[&str], anonymous: bool) -> Option<S3Server> {
        let bin = s3s_fs()?;
        for b in buckets {
            std::fs::create_dir_all(dir.join(b)).unwrap();
        }
        let keys = (!anonymous).then(|| {
            let n = std::process::id() as u64 ^ Instant::now().elapsed().as_nanos() as u64;
            (
                format!("AK{n:x}"),
                format!("SK{:x}", n.wrapping_mul(0x9E3779B97F4A7C15)),
            )
        });
        Some(Self::spawn(bin, dir, keys))
    }

    fn spawn(bin: PathBuf, dir: &Path, keys: Option<(String, String)>) -> S3Server {
        Self::spawn_on(bin, dir, keys, free_port())
    }

    /// Starts the server again after [`stop`](Self::stop), on the same port, directory and
    /// keys (what it stored survives: a server that came back).
    pub fn restart(&mut self) {
        let bin = s3s_fs().expect("s3s-fs ran before");
        let fresh = Self::spawn_on(bin, &self.dir.clone(), self.keys.clone(), self.port);
        // The old handle's child is dead already; dropping it only reaps it.
        drop(std::mem::replace(self, fresh));
    }

    fn spawn_on(bin: PathBuf, dir: &Path, keys: Option<(String, String)>, port: u16) -> S3Server {
        let mut cmd = Command::new(bin);
        cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()]);
        if let Some((ak, sk)) = &keys {
            cmd.args(["--access-key", ak, "--secret-key", sk]);
        }
        cmd.arg(dir).stdout(Stdio::null()).stderr(Stdio::null());
        let child = cmd.spawn().expect("start s3s-fs");
        let s = S3Server {
            child,
            port,
            dir: dir.to_path_buf(),
            keys,
        };
        let t0 = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "s3s-fs did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        s
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The environment a client needs: keys (or none), region, and consent to plain http.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut v = vec![
            ("AWS_REGION".into(), "us-east-1".into()),
            ("AWS_ALLOW_HTTP".into(), "true".into()),
        ];
        if let Some((ak, sk)) = &self.keys {
            v.push(("AWS_ACCESS_KEY_ID".into(), ak.clone()));
            v.push(("AWS_SECRET_ACCESS_KEY".into(), sk.clone()));
        }
        v
    }

    /// A `dcfs` command with this server's environment and endpoint-less arguments; the
    /// caller adds `--endpoint` where it talks S3.
    pub fn dcfs(&self) -> Command {
        let mut c = Command::new(crate::common::dcfs_bin());
        for k in [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_ENDPOINT_URL",
            "AWS_ENDPOINT",
            "AWS_PROFILE",
        ] {
            c.env_remove(k);
        }
        c.envs(self.env());
        c
    }

    /// Stops the server (the directory stays).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}
