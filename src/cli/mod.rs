//! Command-line interface. Each command lives in its own file; errors travel up as
//! `anyhow::Error` and are printed once, here.

#[cfg(feature = "bench")]
mod bench;
mod gen;
mod gpu;
mod mount;
mod pack;
mod push;
mod quantize;
mod util;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The version line, with the rANS decode path this CPU gets (avx2, neon or scalar).
fn version() -> &'static str {
    static V: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    V.get_or_init(|| {
        format!(
            "{} (rANS decode: {})",
            env!("CARGO_PKG_VERSION"),
            dcfs::codec::rans::decode_path()
        )
    })
}

#[derive(Parser)]
#[command(
    name = "dcfs",
    version = version(),
    about = "Lossless compression for model weights, served unchanged through a read-only FUSE mount",
    long_about = "dcfs packs model directories (safetensors, GGUF, configs, tokenizers) into smaller, \
                  checksummed containers and serves them back byte for byte.\n\n\
                  Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=dcfs=debug) for more.\n\n\
                  Exit status: 0 success; 1 data damage found (verify, unpack, a corrupt pack); \
                  2 could not run (bad arguments, I/O errors, missing files); 3 a GPU defect \
                  (verify --gpu on: the pack is sound, but the GPU decoder got chunks wrong)."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    Pack(pack::PackArgs),
    Unpack(pack::UnpackArgs),
    Verify(pack::VerifyArgs),
    Inspect(pack::InspectArgs),
    Push(push::PushArgs),
    Mount(mount::MountArgs),
    Umount(mount::UmountArgs),
    Stats(mount::StatsArgs),
    Quantize(quantize::QuantizeArgs),
    Analyze(quantize::AnalyzeArgs),
    GpuInfo(gpu::GpuInfoArgs),
    #[command(hide = true)]
    GpuDefines(gpu::GpuDefinesArgs),
    #[command(hide = true)]
    GpuBench(gpu::GpuBenchArgs),
    #[cfg(feature = "bench")]
    Bench(bench::BenchArgs),
    /// Writes man pages and shell completions (used by the package build).
    #[command(hide = true)]
    GenDocs(gen::GenDocsArgs),
}

/// Exit status when data damage was found (verify, unpack, a corrupt pack).
const EXIT_DAMAGE: u8 = 1;
/// Exit status when the command could not run: bad arguments (clap's own 2), I/O errors,
/// missing files.
const EXIT_CANNOT_RUN: u8 = 2;

/// Exit status when the pack is sound but the GPU decoder got chunks wrong (`verify --gpu
/// on`): the CPU fallback hid it from the bytes, so it must show here.
const EXIT_GPU_DEFECT: u8 = 3;

/// What a command tells `main` about how it went, beyond success.
pub enum Outcome {
    Ok,
    /// The command ran but found problems (e.g. verify found damage): exit 1, no extra message.
    Failed,
    /// The data is sound but the GPU decoder is not (verify --gpu on): exit 3; the command
    /// has said so.
    GpuDefect,
}

pub fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let invoked_as = args.first().and_then(|a| a.rsplit('/').next()).unwrap_or("dcfs");
    let r = if invoked_as == "mount.dcfs" {
        // The mount sets up its own logging once it knows where (stderr, syslog, a file).
        raise_open_file_limit();
        mount::mount_helper(args)
    } else {
        run(Cli::parse())
    };
    match r {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::Failed) => ExitCode::from(EXIT_DAMAGE),
        Ok(Outcome::GpuDefect) => ExitCode::from(EXIT_GPU_DEFECT),
        Err(e) => {
            eprintln!("dcfs: error: {}", util::one_line(&e));
            // Damaged data stays apart from "could not run", so scripts can tell them apart.
            let damage = e
                .chain()
                .any(|c| c.downcast_ref::<dcfs::Error>().is_some_and(dcfs::Error::is_corrupt));
            ExitCode::from(if damage { EXIT_DAMAGE } else { EXIT_CANNOT_RUN })
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<Outcome> {
    if !matches!(cli.cmd, Cmd::Mount(_)) {
        util::init_logging();
    }
    raise_open_file_limit();
    match cli.cmd {
        Cmd::Pack(a) => pack::pack(a),
        Cmd::Unpack(a) => pack::unpack(a),
        Cmd::Verify(a) => pack::verify(a),
        Cmd::Inspect(a) => pack::inspect(a),
        Cmd::Push(a) => push::push(a),
        Cmd::Mount(a) => mount::mount(a),
        Cmd::Umount(a) => mount::umount(a),
        Cmd::Stats(a) => mount::stats(a),
        Cmd::Quantize(a) => quantize::quantize(a),
        Cmd::Analyze(a) => quantize::analyze(a),
        Cmd::GpuInfo(a) => gpu::gpu_info(a),
        Cmd::GpuDefines(a) => gpu::gpu_defines(a),
        Cmd::GpuBench(a) => gpu::gpu_bench(a),
        #[cfg(feature = "bench")]
        Cmd::Bench(a) => bench::bench(a),
        Cmd::GenDocs(a) => gen::gen_docs(a),
    }
}

/// Raises the soft open-file limit to the hard one: packs of thousands of files are normal,
/// and the common soft limit of 1024 is a default, not a policy. Failure only logs.
fn raise_open_file_limit() {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the rlimit struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 || rl.rlim_cur >= rl.rlim_max {
        return;
    }
    let from = rl.rlim_cur;
    rl.rlim_cur = rl.rlim_max;
    // SAFETY: setrlimit reads the initialised rlimit struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) } == 0 {
        tracing::debug!("open-file limit raised from {from} to {}", rl.rlim_max);
    } else {
        tracing::debug!(
            "could not raise the open-file limit from {from}: {}",
            std::io::Error::last_os_error()
        );
    }
}
