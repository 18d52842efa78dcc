//! `mount`, `umount`, `stats`, and the `mount.dcfs` helper protocol of mount(8).

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;

use super::push::{remote_url, RemoteArgs};
use super::util::{default_threads, human, init_logging_to, one_line, open_log_file, parse_size, LogTarget};
use super::Outcome;
use dcfs::fs::{Mount, MountConfig, MountExtras, STATS_XATTR};
use dcfs::remote::disk_cache::DiskCacheConfig;
use dcfs::remote::{RemoteOptions, RemoteUrl};
use dcfs::store::{default_cache_bytes, Snapshot, Store, StoreOptions};

/// Serve a pack read-only at MNT: the original files, byte for byte.
///
/// Daemonises once the mount is ready (exit 0) unless -f is given. SIGINT/SIGTERM unmount
/// cleanly. Options may also be given squashfuse-style with -o, e.g.
/// `-o cache_size=1G,threads=4,prefetch=8,readahead=4M,allow_other`.
#[derive(Args)]
pub struct MountArgs {
    /// Packed directory (made by `dcfs pack`), or a pushed pack: s3://bucket/prefix,
    /// http(s)://host/path.
    packed: PathBuf,
    /// Mount point (an existing, empty directory).
    mountpoint: PathBuf,
    /// Stay in the foreground (logs to stderr) instead of daemonising.
    #[arg(short, long)]
    foreground: bool,
    /// Comma-separated options: cache_size=SIZE, threads=N, prefetch=N, readahead=SIZE,
    /// fuse_threads=N, allow_other, allow_root, auto_unmount, nonempty (mount over a
    /// directory that has entries), gpu=auto|on|off, log=syslog|stderr, log_file=PATH, ro,
    /// and for remote packs: max_inflight=N (ranged GETs in flight at once),
    /// cache_dir=DIR, disk_cache_size=SIZE, disk_cache_free=PERCENT (of the cache's
    /// filesystem kept free; 5), endpoint=URL, allow_http, no_sign_request,
    /// retry_timeout=SECS (how long a read retries a failing server before EIO; 30).
    /// fstab-only options (defaults, noauto, nofail, _netdev, user, x-*) are accepted and
    /// ignored.
    #[arg(short = 'o', value_name = "OPTS")]
    options: Vec<String>,
    /// Bound on decoded chunk bytes kept in memory (default: RAM/8, 64 MiB..512 MiB).
    #[arg(long, value_parser = parse_size)]
    cache_size: Option<u64>,
    /// Decode worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Chunks decoded ahead of a sequential reader (0 disables prefetch; default: 2 x
    /// threads, at least 8; for remote packs 4 x max_inflight, fetched by halves).
    #[arg(long)]
    prefetch: Option<usize>,
    /// The mount's kernel readahead (bdi read_ahead_kb); 0 keeps the kernel default of 128K.
    #[arg(long, value_parser = parse_size)]
    readahead: Option<u64>,
    /// Let other users read the mount (FUSE allow_other). Off unless asked for.
    #[arg(long)]
    allow_other: bool,
    /// Decode prefetch windows on an NVIDIA GPU: auto (when present and faster than the CPU
    /// on a calibration with this pack's chunks), on (required), off. Off by default until
    /// the GPU path has been measured on real hardware.
    #[arg(long, value_enum)]
    gpu: Option<super::gpu::GpuArg>,
    /// Keep fetched chunks of a remote pack in DIR (compressed, checked on every read):
    /// a remount serves from it with no chunk fetches. Mounts on one node may share DIR.
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Bound on the disk cache (default: no bound but keeping 5% of its filesystem free).
    #[arg(long, value_parser = parse_size, value_name = "SIZE", requires = "cache_dir")]
    disk_cache_size: Option<u64>,
    #[command(flatten)]
    remote: RemoteArgs,
}

/// The pack a mount serves.
enum Pack {
    Local(PathBuf),
    Remote(RemoteUrl, RemoteOptions),
}

impl Pack {
    fn name(&self) -> String {
        match self {
            Pack::Local(p) => p.display().to_string(),
            Pack::Remote(u, _) => u.to_string(),
        }
    }
}

struct Settings {
    store: StoreOptions,
    mount: MountConfig,
    extras: MountExtras,
    /// Mount over a directory that is not empty (its entries are hidden while mounted).
    nonempty: bool,
    gpu: super::gpu::GpuArg,
    log: LogChoice,
    /// `-o max_inflight=N`: ranged GETs in flight at once (remote packs).
    max_inflight: Option<usize>,
    /// The disk cache of a remote pack (`--cache-dir`, `-o cache_dir=`).
    disk_cache: Option<DiskCacheConfig>,
    /// How to reach a remote pack: the flags, with `-o endpoint=`, `allow_http` and
    /// `no_sign_request` (fstab lines have no flags).
    remote: RemoteOptions,
}

/// Where the mount logs: `-o log_file=PATH` wins, then `-o log=`; unset means stderr in
/// the foreground and syslog when detached.
#[derive(Clone, Debug, Default, PartialEq)]
enum LogChoice {
    #[default]
    Auto,
    Syslog,
    Stderr,
    File(PathBuf),
}

fn settings(a: &MountArgs) -> Result<Settings> {
    let mut store = StoreOptions {
        cache_bytes: default_cache_bytes(),
        threads: default_threads(),
        // Set below from the thread count unless given.
        prefetch: 0,
    };
    let mut prefetch = None;
    let mut mount = MountConfig {
        allow_other: a.allow_other,
        readahead_kb: Some(4096),
        fuse_threads: 0,
    };
    let mut readahead = None;
    let mut nonempty = false;
    let mut extras = MountExtras::default();
    let mut gpu = None;
    let mut log = LogChoice::Auto;
    let mut log_file = None;
    let mut max_inflight = None;
    let mut cache_dir = a.cache_dir.clone();
    let mut disk_cache_size = None;
    let mut disk_cache_free = None;
    let mut remote = a.remote.options();
    for opt in a.options.iter().flat_map(|o| o.split(',')).filter(|o| !o.is_empty()) {
        let (k, v) = opt.split_once('=').map_or((opt, None), |(k, v)| (k, Some(v)));
        let need = || v.ok_or_else(|| anyhow!("mount option {k} needs a value ({k}=...)"));
        let num = |s: &str| {
            s.parse::<usize>()
                .map_err(|_| anyhow!("mount option {k}: not a number: {s}"))
        };
        match k {
            "cache_size" => store.cache_bytes = parse_size(need()?).map_err(|e| anyhow!(e))?,
            "threads" => store.threads = num(need()?)?,
            "prefetch" => prefetch = Some(num(need()?)?),
            "readahead" => readahead = Some(parse_size(need()?).map_err(|e| anyhow!(e))?),
            "fuse_threads" => mount.fuse_threads = num(need()?)?,
            "max_inflight" => match num(need()?)? {
                0 => bail!("mount option max_inflight must be at least 1"),
                n => max_inflight = Some(n),
            },
            "cache_dir" => cache_dir = Some(PathBuf::from(need()?)),
            "disk_cache_size" => disk_cache_size = Some(parse_size(need()?).map_err(|e| anyhow!(e))?),
            "disk_cache_free" => {
                let v = need()?;
                match v.trim_end_matches('%').parse::<f64>() {
                    Ok(p) if (0.0..100.0).contains(&p) => disk_cache_free = Some(p / 100.0),
                    _ => bail!("mount option disk_cache_free: {v:?} is not a percentage in [0, 100)"),
                }
            }
            "endpoint" => remote.endpoint = Some(need()?.to_string()),
            "retry_timeout" => match num(need()?)? {
                0 => bail!("mount option retry_timeout must be at least 1 (seconds)"),
                n => remote.retry_budget = std::time::Duration::from_secs(n as u64),
            },
            "allow_http" => remote.allow_http = true,
            "no_sign_request" => remote.no_sign_request = true,
            "allow_other" => mount.allow_other = true,
            "nonempty" => nonempty = true,
            "allow_root" => extras.allow_root = true,
            "auto_unmount" => extras.auto_unmount = true,
            "gpu" => {
                let v = need()?;
                gpu = Some(
                    <super::gpu::GpuArg as clap::ValueEnum>::from_str(v, true)
                        .map_err(|_| anyhow!("mount option gpu: {v:?} is not auto, on or off"))?,
                )
            }
            "log" => {
                log = match need()? {
                    "syslog" => LogChoice::Syslog,
                    "stderr" => LogChoice::Stderr,
                    v => bail!("mount option log: {v:?} is not syslog or stderr (use log_file=PATH for a file)"),
                }
            }
            "log_file" => log_file = Some(PathBuf::from(need()?)),
            "ro" | "defaults" | "auto" | "noauto" | "user" | "nouser" | "users" | "nofail" | "_netdev" | "nodev"
            | "nosuid" | "exec" | "noexec" | "async" | "noatime" | "relatime" => {}
            "rw" => tracing::info!("dcfs mounts are always read-only; ignoring rw"),
            k if k.starts_with("x-") => {}
            k => bail!("unknown mount option {k:?} (see dcfs mount --help)"),
        }
    }
    if let Some(c) = a.cache_size {
        store.cache_bytes = c;
    }
    if let Some(t) = a.threads {
        store.threads = t;
    }
    if let Some(p) = a.prefetch {
        prefetch = Some(p);
    }
    if let Some(r) = a.readahead.or(readahead) {
        mount.readahead_kb = (r > 0).then_some((r / 1024) as u32);
    }
    store.threads = store.threads.max(1);
    if let Some(n) = max_inflight {
        remote.max_inflight = n;
    }
    let prefetch_given = prefetch.is_some();
    store.prefetch = prefetch.unwrap_or_else(|| dcfs::store::default_prefetch(store.threads));
    if !prefetch_given && a.packed.to_str().is_some_and(|p| p.contains("://")) {
        // A remote reader waits on the network, not on decode threads: keep enough
        // chunks ahead that the half of the window refilled at once spans several GETs
        // (the window still ramps up, and the cache share still caps it).
        store.prefetch = store.prefetch.max(remote.max_inflight.saturating_mul(4));
    }
    if store.cache_bytes < (4 << 20) {
        bail!("cache size {} is too small (at least 4M)", human(store.cache_bytes));
    }
    if mount.fuse_threads == 0 {
        // Request threads mostly wait on decodes; more of them keep readahead flowing.
        mount.fuse_threads = (store.threads * 2).clamp(2, 16);
    }
    if mount.allow_other && extras.allow_root {
        bail!("mount options allow_other and allow_root exclude each other");
    }
    if extras.auto_unmount && !(mount.allow_other || extras.allow_root) {
        // fusermount3 refuses it otherwise: say so before mounting.
        bail!("mount option auto_unmount needs allow_root or allow_other as well");
    }
    if let Some(f) = log_file {
        log = LogChoice::File(f);
    }
    let disk_cache_size = a.disk_cache_size.or(disk_cache_size);
    if (disk_cache_size.is_some() || disk_cache_free.is_some()) && cache_dir.is_none() {
        bail!("disk_cache_size and disk_cache_free need a cache directory (--cache-dir DIR or -o cache_dir=DIR)");
    }
    let disk_cache = cache_dir.map(|dir| {
        let d = DiskCacheConfig::new(dir);
        DiskCacheConfig {
            max_bytes: disk_cache_size,
            min_free: disk_cache_free.unwrap_or(d.min_free),
            ..d
        }
    });
    Ok(Settings {
        store,
        mount,
        extras,
        nonempty,
        gpu: a.gpu.or(gpu).unwrap_or(super::gpu::GpuArg::Off),
        log,
        max_inflight,
        disk_cache,
        remote,
    })
}

/// Refuses a mount point that is missing, a stale FUSE mount, already mounted, or (unless
/// `nonempty`) not empty: mounting there would hide its files.
fn preflight(packed: Option<&Path>, mnt: &Path, nonempty: bool) -> Result<()> {
    match std::fs::metadata(mnt) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => bail!(
            "{} is a stale mount (a dcfs that died?): run `dcfs umount -l {}` and mount again",
            mnt.display(),
            mnt.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("mount point {}", mnt.display())),
        Ok(md) if !md.is_dir() => bail!("mount point {} is not a directory", mnt.display()),
        Ok(_) => {}
    }
    let canon = mnt.canonicalize()?;
    let top = mounted_at(&canon);
    // fstab's x-systemd.automount puts an autofs trigger here and runs us when it fires: we
    // mount over it. Its directory is never listed, since opening it would fire it again.
    if top.as_deref() == Some("autofs") {
        if let Some(p) = packed {
            dcfs::pack::read_marker(p)?;
        }
        return Ok(());
    }
    if let Some(fstype) = top {
        bail!(
            "{} is already a mount point ({fstype}); unmount it first (dcfs umount {})",
            mnt.display(),
            mnt.display()
        );
    }
    let has_entries = std::fs::read_dir(&canon)
        .with_context(|| format!("mount point {}", mnt.display()))?
        .next()
        .is_some();
    if has_entries && !nonempty {
        bail!(
            "mount point {} is not empty; mounting would hide its files (use -o nonempty to mount anyway)",
            mnt.display()
        );
    }
    // A remote pack's marker is read when the daemon opens it; its answer comes back
    // through the readiness pipe.
    if let Some(p) = packed {
        dcfs::pack::read_marker(p)?;
    }
    Ok(())
}

/// `p` with its longest existing prefix resolved (the rest may not exist yet).
fn real_prefix(p: &Path) -> PathBuf {
    let mut rest = Vec::new();
    let mut cur = p.to_path_buf();
    loop {
        if let Ok(c) = cur.canonicalize() {
            return rest
                .into_iter()
                .rev()
                .fold(c, |acc, part: std::ffi::OsString| acc.join(part));
        }
        match (cur.file_name().map(|n| n.to_os_string()), cur.parent()) {
            (Some(n), Some(parent)) => {
                rest.push(n);
                cur = parent.to_path_buf();
            }
            _ => return p.to_path_buf(),
        }
    }
}

/// The filesystem type mounted exactly at `path` (the topmost, if stacked).
fn mounted_at(path: &Path) -> Option<String> {
    dcfs::fs::top_mount_at(path).map(|m| m.fstype)
}

pub fn mount(a: MountArgs) -> Result<Outcome> {
    let s = settings(&a)?;
    let remote = remote_url(&a.packed)?;
    preflight(
        remote.is_none().then_some(a.packed.as_path()),
        &a.mountpoint,
        s.nonempty,
    )?;
    // Absolute paths: the daemon changes its directory to /.
    let packed = match remote {
        Some(u) => {
            let mut o = s.remote.clone();
            if let Some(c) = &s.disk_cache {
                // Absolute: the daemon changes its directory to /.
                let mut c = c.clone();
                c.dir = std::path::absolute(&c.dir).with_context(|| format!("cache directory {}", c.dir.display()))?;
                // Inside the mount it would be served by the daemon that writes it: a
                // read-only tree at best, a deadlock at worst.
                let real = real_prefix(&c.dir);
                let mnt = a.mountpoint.canonicalize()?;
                if real.starts_with(&mnt) {
                    bail!(
                        "cache directory {} is inside the mount point {}; put it elsewhere",
                        c.dir.display(),
                        mnt.display()
                    );
                }
                o.disk_cache = Some(c);
            }
            Pack::Remote(u, o)
        }
        None => {
            if s.disk_cache.is_some() {
                bail!("a disk cache (--cache-dir) is for remote packs; a local pack is read from its own disk");
            }
            if s.max_inflight.is_some() {
                tracing::info!("max_inflight applies to remote packs only; ignoring it");
            }
            Pack::Local(a.packed.canonicalize()?)
        }
    };
    let mnt = a.mountpoint.canonicalize()?;
    // Opened here, before detaching, so a bad path is reported to the caller.
    let file = match &s.log {
        LogChoice::File(p) => Some(open_log_file(p).with_context(|| format!("opening the log file {}", p.display()))?),
        _ => None,
    };
    let target = |detached: bool| match (file, &s.log) {
        (Some(f), _) => LogTarget::File(f),
        (None, LogChoice::Syslog) => LogTarget::Syslog,
        (None, LogChoice::Stderr) => LogTarget::Stderr,
        (None, _) if detached => LogTarget::Syslog,
        (None, _) => LogTarget::Stderr,
    };
    if a.foreground {
        init_logging_to(target(false), "info");
        return serve(&packed, &mnt, &s, None);
    }
    let mut fds = [0i32; 2];
    // Close-on-exec: a helper the daemon runs (fusermount3 -o auto_unmount stays alive
    // for the mount's lifetime) must not hold the write end, or we never see its end.
    // SAFETY: `fds` is a valid two-element array for pipe2(2) to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("pipe");
    }
    // SAFETY: pipe(2) just returned these two descriptors, owned by nobody else.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: no other thread exists yet (the store and FUSE threads start in the child),
    // so the child may keep running Rust code after fork.
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()).context("fork"),
        0 => {
            drop(rd);
            detach();
            init_logging_to(target(true), "info");
            let code = match serve(&packed, &mnt, &s, Some(wr)) {
                Ok(_) => 0,
                Err(_) => 1,
            };
            std::process::exit(code);
        }
        _child => {
            drop(wr);
            let mut msg = String::new();
            std::fs::File::from(rd).read_to_string(&mut msg)?;
            match msg.strip_prefix("OK") {
                Some(_) => Ok(Outcome::Ok),
                None if msg.is_empty() => bail!("the mount daemon exited before the mount was ready"),
                None => bail!("{}", msg.trim_start_matches("ERR ").trim_end()),
            }
        }
    }
}

/// Starts a new session and points stdio at /dev/null, like any daemon.
fn detach() {
    // SAFETY: setsid, chdir, open and dup2 on valid, NUL-terminated paths and descriptors.
    unsafe {
        libc::setsid();
        libc::chdir(c"/".as_ptr());
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            libc::dup2(null, 0);
            libc::dup2(null, 1);
            libc::dup2(null, 2);
            if null > 2 {
                libc::close(null);
            }
        }
    }
}

/// Opens the store, mounts, reports readiness through `ready`, then serves until unmounted
/// (by `dcfs umount`, umount(8), or SIGINT/SIGTERM/SIGHUP).
fn serve(pack: &Pack, mnt: &Path, s: &Settings, ready: Option<OwnedFd>) -> Result<Outcome> {
    let tell = |ready: Option<OwnedFd>, msg: &str| {
        if let Some(fd) = ready {
            let _ = std::fs::File::from(fd).write_all(msg.as_bytes());
        }
    };
    // Block the stop signals before any thread starts, so only the watcher receives them.
    let set = stop_signals();
    // SAFETY: `set` is an initialised sigset_t; a null old-set pointer is allowed.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    let packed = pack.name();
    let r = match pack {
        Pack::Local(p) => s.gpu.decoder(p).and_then(|g| {
            Store::open_with_gpu(p, s.store.clone(), g).with_context(|| format!("opening {}", p.display()))
        }),
        // The runtime behind the connection starts threads: it is made here, after the
        // fork, never before.
        Pack::Remote(u, o) => match s.gpu {
            super::gpu::GpuArg::Off | super::gpu::GpuArg::Auto => {
                Store::open_remote(u, o, s.store.clone()).with_context(|| format!("opening {u}"))
            }
            g => Err(anyhow!("--gpu {g:?}: a remote pack decodes on the CPU")),
        },
    }
    .and_then(|store| {
        Mount::new_with(store, mnt, &s.mount, &s.extras).with_context(|| format!("mounting at {}", mnt.display()))
    });
    let mut m = match r {
        Ok(m) => m,
        Err(e) => {
            tracing::error!("mount of {} at {} failed: {}", packed, mnt.display(), one_line(&e));
            tell(ready, &format!("ERR {}", one_line(&e)));
            return Err(e);
        }
    };
    let unmounter = m.unmounter();
    std::thread::Builder::new().name("dcfs-signals".into()).spawn(move || {
        let mut sig = 0;
        // SAFETY: `set` is initialised and `sig` is a valid out-pointer.
        unsafe { libc::sigwait(&set, &mut sig) };
        tracing::info!("signal {sig}: unmounting");
        if unmounter.unmount(false).is_err() {
            // Busy: detach lazily so the serving loop still ends.
            let _ = unmounter.unmount(true);
        }
    })?;
    tracing::info!(
        "serving {} at {} (cache {}, {} decode threads, prefetch {})",
        packed,
        mnt.display(),
        human(s.store.cache_bytes),
        s.store.threads,
        s.store.prefetch
    );
    tell(ready, "OK");
    sd_notify("READY=1");
    let r = m.run().context("serving the mount");
    sd_notify("STOPPING=1");
    match &r {
        Ok(()) => tracing::info!("unmounted {} from {}", packed, mnt.display()),
        Err(e) => tracing::error!("{} at {}: {}", packed, mnt.display(), one_line(e)),
    }
    r.map(|()| Outcome::Ok)
}

/// Tells systemd (`Type=notify`) our state on $NOTIFY_SOCKET, when set; a path or an
/// abstract name (`@...`). Failure only logs: the mount itself works either way.
fn sd_notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let r = (|| -> std::io::Result<()> {
        use std::os::unix::net::{SocketAddr, UnixDatagram};
        let bytes = path.as_bytes();
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name)?
            }
            None => SocketAddr::from_pathname(Path::new(&path))?,
        };
        let msg = format!("{state}\nMAINPID={}", std::process::id());
        UnixDatagram::unbound()?.send_to_addr(msg.as_bytes(), &addr)?;
        Ok(())
    })();
    if let Err(e) = r {
        tracing::warn!("sd_notify {state} on {}: {e}", path.to_string_lossy());
    }
}

fn stop_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a zeroed sigset_t we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        set
    }
}

/// Unmount a dcfs mount.
#[derive(Args)]
pub struct UmountArgs {
    /// Mount point.
    mountpoint: PathBuf,
    /// Detach now even if files are open (lazy unmount); needed for a stale mount.
    #[arg(short, long)]
    lazy: bool,
}

pub fn umount(a: UmountArgs) -> Result<Outcome> {
    let p = CString::new(a.mountpoint.as_os_str().as_bytes())?;
    // One call removes at most the topmost mount there; never follow a link as the path.
    let flags = if a.lazy { libc::MNT_DETACH } else { 0 } | libc::UMOUNT_NOFOLLOW;
    // SAFETY: `p` is a valid NUL-terminated path.
    if unsafe { libc::umount2(p.as_ptr(), flags) } != 0 {
        let e = std::io::Error::last_os_error();
        // A user's own FUSE mount: the setuid fusermount3 may unmount it for them.
        if e.raw_os_error() == Some(libc::EPERM) && fusermount_unmount(&a.mountpoint, a.lazy)? {
            return Ok(Outcome::Ok);
        }
        let hint = match e.raw_os_error() {
            Some(libc::EBUSY) => "; files are open there: close them or use `dcfs umount -l`",
            Some(libc::EINVAL) => "; it is not a mount point",
            Some(libc::EPERM) => "; unmounting needs root or fusermount3 (Debian: fuse3), which was not found",
            _ => "",
        };
        bail!("cannot unmount {}: {e}{hint}", a.mountpoint.display());
    }
    Ok(Outcome::Ok)
}

/// Runs `fusermount3 -u [-z] MNT` (or `fusermount`); Ok(false) when neither is installed.
fn fusermount_unmount(mnt: &Path, lazy: bool) -> Result<bool> {
    for prog in ["fusermount3", "fusermount"] {
        let mut cmd = std::process::Command::new(prog);
        cmd.arg("-u");
        if lazy {
            cmd.arg("-z");
        }
        match cmd.arg("--").arg(mnt).status() {
            Ok(st) if st.success() => return Ok(true),
            Ok(st) => bail!("cannot unmount {}: {prog} -u failed ({st})", mnt.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("running {prog}")),
        }
    }
    Ok(false)
}

/// Live statistics of a running mount.
#[derive(Args)]
pub struct StatsArgs {
    /// Mount point.
    mountpoint: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Reads the statistics xattr of a mount root.
pub fn read_stats(mnt: &Path) -> Result<Snapshot> {
    let p = CString::new(mnt.as_os_str().as_bytes())?;
    let name = CString::new(STATS_XATTR)?;
    let mut buf = vec![0u8; 64 << 10];
    // SAFETY: valid NUL-terminated strings and a buffer of the length we pass.
    let n = unsafe { libc::getxattr(p.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        bail!("{} is not a dcfs mount ({e})", mnt.display());
    }
    buf.truncate(n as usize);
    Ok(serde_json::from_slice(&buf)?)
}

pub fn stats(a: StatsArgs) -> Result<Outcome> {
    let s = read_stats(&a.mountpoint)?;
    if a.json {
        println!("{}", super::util::json_text(&s, true)?);
        return Ok(Outcome::Ok);
    }
    let pct = |a: u64, b: u64| if b == 0 { 0.0 } else { 100.0 * a as f64 / b as f64 };
    println!(
        "files            {} ({} packed -> {} served)",
        s.files,
        human(s.packed_bytes),
        human(s.original_bytes)
    );
    println!("reads            {} ({} served)", s.reads, human(s.bytes_served));
    println!(
        "chunk lookups    {} hits, {} misses ({:.1}% hit), {} raw reads",
        s.chunk_hits,
        s.chunk_misses,
        pct(s.chunk_hits, s.chunk_hits + s.chunk_misses),
        s.raw_reads
    );
    println!(
        "decodes          {} ({} in {:.2}s CPU, {:.0} MB/s per thread)",
        s.decodes,
        human(s.bytes_decoded),
        s.decode_seconds,
        s.bytes_decoded as f64 / 1e6 / s.decode_seconds.max(1e-9)
    );
    println!(
        "cache            {} of {} in {} chunks ({} of it bookkeeping), {} evictions",
        human(s.cache_bytes),
        human(s.cache_capacity),
        s.cache_entries,
        human(s.cache_overhead_bytes),
        s.evictions
    );
    println!(
        "recycling        {} chunks dropped behind sequential readers, {} of buffers kept",
        s.dropped_behind,
        human(s.pooled_bytes)
    );
    println!("prefetch         {} issued, {} hit", s.prefetch_issued, s.prefetch_hits);
    println!("errors           {}", s.errors);
    if s.remote {
        println!(
            "network          {} GETs, {} fetched, {} retries, {} errors",
            s.net_gets,
            human(s.net_bytes),
            s.net_retries,
            s.net_errors
        );
        if s.refetches > 0 {
            println!("refetches        {} (chunks that failed their check once)", s.refetches);
        }
    }
    if s.disk_cache {
        println!(
            "disk cache       {} hits ({}), {} misses, {} written, {} skipped, {} torn, {} evicted, {} used",
            s.disk_hits,
            human(s.disk_hit_bytes),
            s.disk_misses,
            s.disk_writes,
            s.disk_skipped,
            s.disk_torn,
            s.disk_evictions,
            human(s.disk_usage)
        );
    }
    Ok(Outcome::Ok)
}

/// mount(8) runs `mount.dcfs SPEC DIR [-sfnv] [-o OPTS]` for `-t dcfs` and fstab lines.
pub fn mount_helper(args: Vec<String>) -> Result<Outcome> {
    let mut pos = Vec::new();
    let mut options = Vec::new();
    let mut fake = false;
    let mut it = args.into_iter().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "-o" => options.push(it.next().ok_or_else(|| anyhow!("-o needs options"))?),
            "-t" | "-N" => {
                it.next();
            }
            "-f" => fake = true,
            "-s" | "-n" | "-v" => {}
            s if s.starts_with("-o") => options.push(s[2..].to_string()),
            s if s.starts_with('-') => bail!("mount.dcfs: unknown flag {s}"),
            _ => pos.push(PathBuf::from(a)),
        }
    }
    let [packed, mountpoint] =
        <[PathBuf; 2]>::try_from(pos).map_err(|_| anyhow!("usage: mount.dcfs PACKED DIR [-o OPTS]"))?;
    if fake {
        return Ok(Outcome::Ok);
    }
    mount(MountArgs {
        packed,
        mountpoint,
        foreground: false,
        options,
        cache_size: None,
        threads: None,
        prefetch: None,
        readahead: None,
        allow_other: false,
        gpu: None,
        cache_dir: None,
        disk_cache_size: None,
        remote: RemoteArgs::default(),
    })
}
