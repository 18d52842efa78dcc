//! `pack`, `unpack`, `verify`, `inspect`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};

use super::gpu::GpuArg;
use super::push::{remote_url, RemoteArgs};
use super::util::{default_threads, human, parse_size, Bar};
use super::Outcome;
use dcfs::chunk::{CodecChoice, EncodeOptions};
use dcfs::pack::{self, adaptive, PackOptions};
use dcfs::remote::RemoteUrl;

#[derive(Clone, Copy, ValueEnum)]
pub enum CodecArg {
    /// Per plane, the smaller of rANS and zstd (rANS unless zstd is >3% smaller; zstd is
    /// tried in full only where a 64 KiB probe beats the order-0 bound); raw if the chunk
    /// gains less than --min-gain.
    Auto,
    /// Our interleaved rANS (order-0, GPU-decodable stream layout).
    Rans,
    /// zstd at --level.
    Zstd,
    /// Store everything uncompressed (measures the mount's own overhead).
    Raw,
}

#[derive(Args)]
pub struct EncodeArgs {
    /// Codec policy.
    #[arg(long, value_enum, default_value = "auto")]
    codec: CodecArg,
    /// zstd compression level (1-22) when zstd is tried.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=22))]
    level: i32,
    /// Largest chunk, e.g. 256K, 1M, 4M. Chunks never straddle tensors; smaller chunks mean
    /// finer random access, larger ones slightly better ratios.
    #[arg(long, default_value = "1M", value_parser = parse_size)]
    chunk_size: u64,
    /// Chunks gaining less than this fraction stay raw (served without decoding).
    #[arg(long, default_value_t = 0.03)]
    min_gain: f64,
    /// Fraction of each tensor's chunks to compress (DC's speed-adaptive partial
    /// compression: for storage faster than the decoder). 0..=1, or `auto` (pack only):
    /// sample the tensors, measure ratio and decode speed here, and pick the fraction with
    /// the shortest modelled load time at --storage-bw (0 unless coding gains at least 3%).
    #[arg(long, default_value = "1", value_parser = parse_fraction)]
    compress_fraction: Fraction,
    /// Storage read bandwidth for `--compress-fraction auto`, bytes per second (e.g. 200M;
    /// measure it with `dcfs bench storage PATH`).
    #[arg(long, value_parser = parse_size)]
    storage_bw: Option<u64>,
    /// Decode threads the mount will use, for `--compress-fraction auto` (default: all cores).
    #[arg(long)]
    decode_threads: Option<usize>,
    /// For `--compress-fraction auto`: the mount's measured end-to-end rates on this machine,
    /// `RAW,CODED` bytes/s of original data (e.g. 700M,500M), from `dcfs bench read` on a
    /// fresh mount of a `--codec raw` and an auto pack whose containers are in the page
    /// cache. Without it only the sampled codec speed is modelled (FUSE cost ignored).
    #[arg(long, value_name = "RAW,CODED")]
    mount_rates: Option<String>,
    /// Pack files whose safetensors/GGUF header is malformed as opaque bytes (with a
    /// warning) instead of failing.
    #[arg(long)]
    lenient: bool,
    /// Worker threads (default: all cores).
    #[arg(long, short = 'j', default_value_t = default_threads())]
    threads: usize,
}

#[derive(Clone, Copy, Debug)]
pub enum Fraction {
    Auto,
    Value(f64),
}

fn parse_fraction(s: &str) -> Result<Fraction, String> {
    if s.eq_ignore_ascii_case("auto") {
        return Ok(Fraction::Auto);
    }
    match s.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(Fraction::Value(f)),
        _ => Err(format!("{s:?}: expected a number between 0 and 1, or auto")),
    }
}

impl EncodeArgs {
    fn options(&self) -> Result<PackOptions> {
        let compress_fraction = match self.compress_fraction {
            Fraction::Value(f) => f,
            // Resolved by `pack` once the tree is sampled.
            Fraction::Auto => 1.0,
        };
        if !(0.0..1.0).contains(&self.min_gain) {
            bail!("--min-gain must be in [0, 1)");
        }
        let max = dcfs::format::MAX_CHUNK_LEN as u64;
        if !(4096..=max).contains(&self.chunk_size) {
            bail!("--chunk-size must be between 4K and {}", human(max));
        }
        Ok(PackOptions {
            encode: EncodeOptions {
                codec: match self.codec {
                    CodecArg::Auto => CodecChoice::Auto,
                    CodecArg::Rans => CodecChoice::Rans,
                    CodecArg::Zstd => CodecChoice::Zstd,
                    CodecArg::Raw => CodecChoice::Raw,
                },
                zstd_level: self.level,
                min_gain: self.min_gain,
            },
            chunk_size: self.chunk_size as u32,
            threads: self.threads.max(1),
            compress_fraction,
            lenient: self.lenient,
            ..Default::default()
        })
    }
}

/// Pack a model directory into a directory of .dcz containers (SRC is only read), or
/// straight to object storage (DST s3://bucket/prefix).
#[derive(Args)]
pub struct PackArgs {
    /// Model directory to pack.
    src: PathBuf,
    /// Output directory (created; must be empty or an earlier pack), or s3://bucket/prefix:
    /// then SRC is packed into a temporary directory under --tmp-dir, pushed as by
    /// `dcfs push`, and the temporary directory removed (also when packing or the push
    /// fails).
    dst: PathBuf,
    /// Where the temporary pack of an s3:// DST goes (default $TMPDIR, else /tmp). It needs
    /// the packed size free: about the model's size divided by the ratio.
    #[arg(long, value_name = "DIR")]
    tmp_dir: Option<PathBuf>,
    /// How to reach an s3:// DST (as for `dcfs push`).
    #[command(flatten)]
    remote: RemoteArgs,
    #[command(flatten)]
    enc: EncodeArgs,
    /// Pack the targets of symlinks that point outside SRC as regular files (e.g. a Hugging
    /// Face `snapshots/<rev>` directory, whose files are links to `../../blobs/`). Without
    /// it such links are kept as links, with a warning.
    #[arg(long)]
    dereference: bool,
    /// Write a pack even when SRC holds no regular file (otherwise an error, exit 2).
    #[arg(long)]
    allow_empty: bool,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub fn pack(a: PackArgs) -> Result<Outcome> {
    let mut opts = a.enc.options()?;
    opts.dereference = a.dereference;
    opts.allow_empty = a.allow_empty;
    if let Fraction::Auto = a.enc.compress_fraction {
        let Some(bw) = a.enc.storage_bw else {
            bail!("--compress-fraction auto needs --storage-bw (measure it with `dcfs bench storage PATH`)");
        };
        let threads = a.enc.decode_threads.unwrap_or_else(default_threads).max(1);
        let sample =
            adaptive::sample_tree(&a.src, &opts, 32 << 20).with_context(|| format!("sampling {}", a.src.display()))?;
        let rates = match &a.enc.mount_rates {
            None => None,
            Some(r) => {
                let v: Vec<u64> = r
                    .split(',')
                    .map(parse_size)
                    .collect::<std::result::Result<_, _>>()
                    .map_err(|e| anyhow::anyhow!("--mount-rates: {e}"))?;
                let [raw, coded] = v[..] else {
                    bail!("--mount-rates takes RAW,CODED (two rates, e.g. 700M,500M)");
                };
                Some(adaptive::MountRates {
                    raw_bps: raw as f64,
                    coded_bps: coded as f64,
                })
            }
        };
        let c = adaptive::choose_fraction(&sample, bw as f64, threads, adaptive::DEFAULT_MODEL, rates);
        eprintln!(
            "compress-fraction auto: {:.2} (storage {}/s, sample ratio {:.3}, decode {:.0} MB/s/thread x {threads}, \
             modelled load {:.2}s)",
            c.fraction,
            human(bw),
            sample.ratio,
            sample.decode_bps / 1e6,
            c.predicted_s
        );
        let variants = [
            (adaptive::LoadModel::Overlap, None),
            (adaptive::LoadModel::Serial, None),
        ]
        .into_iter()
        .chain(rates.map(|r| (adaptive::LoadModel::Overlap, Some(r))))
        .chain(rates.map(|r| (adaptive::LoadModel::Serial, Some(r))));
        for (model, r) in variants {
            let pts: Vec<String> = [0.0, 0.2, 0.5, 1.0]
                .iter()
                .map(|&f| {
                    format!(
                        "f={f} {:.3}s",
                        adaptive::model_time(&sample, f, bw as f64, threads, model, r)
                    )
                })
                .collect();
            let pick = adaptive::choose_fraction(&sample, bw as f64, threads, model, r).fraction;
            let how = if r.is_some() { "mount rates" } else { "codec speed" };
            eprintln!("  modelled load ({model:?}, {how}): {}; pick {pick:.2}", pts.join(", "));
        }
        opts.compress_fraction = c.fraction;
    } else if a.enc.storage_bw.is_some() || a.enc.mount_rates.is_some() {
        bail!("--storage-bw and --mount-rates only apply to --compress-fraction auto");
    }
    // An s3:// DST: pack into a temporary directory (removed when `_tmp` drops, on success
    // and on every error return), then push it.
    let remote_dst = match remote_url(&a.dst)? {
        None => None,
        Some(u @ RemoteUrl::S3 { .. }) => Some(u),
        Some(RemoteUrl::Http { .. }) => {
            bail!("pack to a URL needs s3://bucket/prefix; a plain http server cannot take uploads")
        }
    };
    let _tmp;
    let dst = match &remote_dst {
        None => a.dst.clone(),
        Some(_) => {
            let under = a.tmp_dir.clone().unwrap_or_else(std::env::temp_dir);
            let t = TempPack::new(&under)?;
            let d = t.0.join("packed");
            _tmp = t;
            d
        }
    };
    let bar = Bar::new(a.json);
    let r = pack::pack_tree(&a.src, &dst, &opts, &bar);
    bar.finish();
    let r = r.with_context(|| format!("packing {} into {}", a.src.display(), dst.display()))?;
    let pushed = match &remote_dst {
        None => None,
        Some(url) => {
            let bar = Bar::new(a.json);
            let p = dcfs::remote::pack::push(&dst, url, &a.remote.options(), &bar);
            bar.finish();
            Some(p.with_context(|| format!("pushing the pack of {} to {url}", a.src.display()))?)
        }
    };
    if a.json {
        let mut v = serde_json::to_value(&r)?;
        if let (Some(o), Some(p)) = (v.as_object_mut(), &pushed) {
            o.insert("push".into(), serde_json::to_value(p)?);
        }
        println!("{}", super::util::json_text(&v, true)?);
        return Ok(Outcome::Ok);
    }
    println!(
        "{:<48} {:>11} {:>11} {:>7}  codecs (share of original bytes)",
        "file", "original", "packed", "ratio"
    );
    for f in &r.files {
        let mix = [
            ("rans", f.bytes_rans),
            ("zstd", f.bytes_zstd),
            ("mixed", f.bytes_mixed),
            ("raw", f.bytes_raw),
        ]
        .iter()
        .filter(|(_, b)| *b > 0)
        .map(|(n, b)| format!("{n} {:.0}%", 100.0 * *b as f64 / f.size.max(1) as f64))
        .collect::<Vec<_>>()
        .join(", ");
        println!(
            "{:<48} {:>11} {:>11} {:>7.3}  {mix}",
            f.path,
            human(f.size),
            human(f.packed),
            pack::ratio(f.size, f.packed)
        );
    }
    println!(
        "packed {} files ({} dirs, {} symlinks{}, {} skipped): {} -> {}, ratio {:.3}, {:.1}s, {:.0} MB/s",
        r.files.len(),
        r.dirs,
        r.symlinks,
        match (r.outside_links - r.dereferenced, r.dereferenced) {
            (0, 0) => String::new(),
            (0, d) => format!(", {d} dereferenced"),
            (k, 0) => format!(" ({k} dangling outside SRC)"),
            (k, d) => format!(" ({k} dangling outside SRC), {d} dereferenced"),
        },
        r.skipped.len(),
        human(r.original_bytes),
        human(r.packed_bytes),
        r.ratio(),
        r.seconds,
        r.original_bytes as f64 / 1e6 / r.seconds.max(1e-9)
    );
    if let (Some(p), Some(url)) = (&pushed, &remote_dst) {
        println!(
            "pushed {} files ({} dirs, {} symlinks), {} in {:.1}s to {url}",
            p.files,
            p.dirs,
            p.symlinks,
            human(p.bytes),
            p.seconds
        );
    }
    Ok(Outcome::Ok)
}

/// A private temporary directory for `pack SRC s3://…`, removed with everything in it when
/// dropped: after the push, and on every error path (not when the process is killed).
struct TempPack(PathBuf);

impl TempPack {
    fn new(under: &std::path::Path) -> Result<TempPack> {
        use std::os::unix::fs::DirBuilderExt;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p = under.join(format!(".dcfs-pack-{}-{nanos:08x}", std::process::id()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&p)
            .with_context(|| format!("creating the temporary pack directory {} (--tmp-dir)", p.display()))?;
        Ok(TempPack(p))
    }
}

impl Drop for TempPack {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!("warning: could not remove the temporary pack {}: {e}", self.0.display());
            }
        }
    }
}

/// How `unpack` and `verify` decode.
#[derive(Args)]
pub struct DecodeArgs {
    /// Decode threads (default: all cores).
    #[arg(long, short = 'j', default_value_t = default_threads())]
    threads: usize,
    /// Decode rANS on an NVIDIA GPU: auto (when present and faster than the CPU on a
    /// calibration), on (required), off.
    #[arg(long, value_enum, default_value = "auto")]
    gpu: GpuArg,
    #[command(flatten)]
    remote: RemoteArgs,
}

/// Where a pack to decode lives: opened remotely, or local with its GPU decoder.
enum Packed {
    Remote(dcfs::remote::pack::RemotePack),
    Local(Option<dcfs::gpu::Decoder>),
}

impl DecodeArgs {
    /// Opens the remote pack `packed` names, or sets up the GPU decoder for a local one
    /// (remote packs decode on the CPU).
    fn open(&self, packed: &Path) -> Result<Packed> {
        match remote_url(packed)? {
            Some(u) => Ok(Packed::Remote(dcfs::remote::pack::RemotePack::open(
                &u,
                &self.remote.options(),
            )?)),
            None => Ok(Packed::Local(self.gpu.decoder(packed)?)),
        }
    }
}

/// Restore the original files (byte-identical, with mode and mtime) from a pack.
#[derive(Args)]
pub struct UnpackArgs {
    /// Packed directory, or a pushed pack (s3://bucket/prefix, http(s)://…).
    packed: PathBuf,
    /// Where to write the originals.
    dst: PathBuf,
    #[command(flatten)]
    decode: DecodeArgs,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub fn unpack(a: UnpackArgs) -> Result<Outcome> {
    let what = || format!("unpacking {}", a.packed.display());
    let src = a.decode.open(&a.packed).with_context(what)?;
    let (bar, threads) = (Bar::new(a.json), a.decode.threads);
    let r = match &src {
        Packed::Remote(p) => pack::unpack_remote(p, &a.dst, threads, &bar),
        Packed::Local(gpu) => pack::unpack_tree_with(&a.packed, &a.dst, threads, gpu.as_ref(), &bar),
    };
    bar.finish();
    let r = r.with_context(what)?;
    if a.json {
        println!("{}", super::util::json_text(&r, true)?);
    } else {
        println!(
            "unpacked {} files ({} dirs, {} symlinks), {} in {:.1}s; every chunk and file digest verified",
            r.files,
            r.dirs,
            r.symlinks,
            human(r.bytes),
            r.seconds
        );
    }
    Ok(Outcome::Ok)
}

/// Decode everything and check every chunk checksum and whole-file digest.
///
/// Exit status: 0 all verified; 1 damage found; 2 could not run; 3 a GPU defect: with
/// `--gpu on`, every chunk passed on the CPU but the GPU decoder returned some unusable
/// (flagged, failing its checksum, or a failed batch), so they were decoded again on the
/// CPU. The bytes were right; the GPU path is not. (`--gpu auto` only warns.)
#[derive(Args)]
pub struct VerifyArgs {
    /// Packed directory, a single .dcz file, or a pushed pack (s3://bucket/prefix, http(s)://…).
    packed: PathBuf,
    #[command(flatten)]
    decode: DecodeArgs,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub fn verify(a: VerifyArgs) -> Result<Outcome> {
    let what = || format!("verifying {}", a.packed.display());
    let src = a.decode.open(&a.packed).with_context(what)?;
    // A GPU the user asked for must not hide its own failures behind the CPU fallback.
    let gpu_required = matches!(a.decode.gpu, GpuArg::On | GpuArg::Emulate);
    let (bar, threads) = (Bar::new(a.json), a.decode.threads);
    let gpu = match &src {
        Packed::Local(gpu) => gpu.as_ref(),
        Packed::Remote(_) => None,
    };
    let r = match &src {
        Packed::Remote(p) => pack::verify_remote(p, threads, &bar),
        Packed::Local(_) => pack::verify_tree_with(&a.packed, threads, gpu, &bar),
    };
    bar.finish();
    let r = r.with_context(what)?;
    if a.json {
        println!("{}", super::util::json_text(&r, true)?);
    } else {
        for f in &r.files {
            match &f.error {
                None => println!("ok      {} ({}, {} chunks)", f.path, human(f.size), f.chunks),
                Some(e) => println!("FAILED  {}: {e}", f.path),
            }
        }
        println!(
            "{} files, {} verified in {:.1}s ({:.0} MB/s), {} failed",
            r.files.len(),
            human(r.bytes),
            r.seconds,
            r.bytes as f64 / 1e6 / r.seconds.max(1e-9),
            r.failures()
        );
        if gpu.is_some() {
            println!(
                "GPU: {} chunks decoded on the GPU, {} fell back to the CPU",
                r.gpu_chunks, r.gpu_fallbacks
            );
        }
    }
    if r.gpu_defects > 0 {
        eprintln!(
            "dcfs: {}: the GPU decoder got {} chunks wrong that the CPU decoded and verified \
             (GPU defect; the bytes checked were the CPU's){}",
            if gpu_required { "error" } else { "warning" },
            r.gpu_defects,
            if gpu_required {
                ""
            } else {
                "; use --gpu off to avoid it"
            }
        );
    }
    if r.failures() > 0 {
        if !a.json {
            eprintln!(
                "dcfs: error: {} of {} files failed verification",
                r.failures(),
                r.files.len()
            );
        }
        return Ok(Outcome::Failed);
    }
    if gpu_required && r.gpu_defects > 0 {
        return Ok(Outcome::GpuDefect);
    }
    Ok(Outcome::Ok)
}

/// Per file and tensor: dtype, shape, sizes, ratio, order-0 bound and codec mix. On an
/// unpacked model it shows what `pack` would do (a dry run with the same options).
#[derive(Args)]
pub struct InspectArgs {
    /// Packed directory, .dcz file, model directory, model file, or a pushed pack
    /// (s3://bucket/prefix, http(s)://…).
    path: PathBuf,
    /// Also list every tensor.
    #[arg(long)]
    tensors: bool,
    #[command(flatten)]
    enc: EncodeArgs,
    #[command(flatten)]
    remote: RemoteArgs,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub fn inspect(a: InspectArgs) -> Result<Outcome> {
    let opts = a.enc.options()?;
    let bar = Bar::new(true);
    let r = match remote_url(&a.path)? {
        Some(u) => dcfs::remote::pack::RemotePack::open(&u, &a.remote.options())
            .and_then(|p| pack::inspect_remote(&p, opts.threads, &bar)),
        None => pack::inspect_path(&a.path, &opts, &bar),
    };
    let r = r.with_context(|| format!("inspecting {}", a.path.display()))?;
    if a.json {
        println!("{}", super::util::json_text(&r, true)?);
        return Ok(Outcome::Ok);
    }
    if !r.packed_input {
        println!("(dry run: what `dcfs pack` would write; sizes exclude the container index)");
    }
    println!(
        "{:<44} {:>11} {:>11} {:>7} {:>7} {:>8}  codecs",
        "file", "original", "packed", "ratio", "bound", "vs bound"
    );
    for f in &r.files {
        let codecs = f
            .codecs
            .iter()
            .map(|(k, v)| format!("{k} {:.0}%", 100.0 * *v as f64 / f.size.max(1) as f64))
            .collect::<Vec<_>>()
            .join(", ");
        let (bound, vs) = if f.tensor_bound > 0.0 {
            (
                format!("{:.3}", f.tensor_bytes as f64 / f.tensor_bound),
                format!("{:+.2}%", 100.0 * (f.tensor_packed as f64 / f.tensor_bound - 1.0)),
            )
        } else {
            ("-".into(), "-".into())
        };
        println!(
            "{:<44} {:>11} {:>11} {:>7.3} {:>7} {:>8}  {codecs}",
            f.path,
            human(f.size),
            human(f.packed),
            f.ratio,
            bound,
            vs
        );
        if a.tensors {
            for t in &f.tensors {
                let planes = t
                    .planes
                    .iter()
                    .map(|p| format!("{:.2}", p.bound * 8.0 / p.bytes.max(1) as f64))
                    .collect::<Vec<_>>()
                    .join("/");
                println!(
                    "    {:<52} {:<7} {:<16} {:>10} {:>7.3} bound {:>6.3} {:<10} bits/byte {planes}",
                    t.name,
                    t.dtype,
                    format!("{:?}", t.shape),
                    human(t.bytes),
                    t.ratio,
                    t.bound_ratio,
                    t.transform
                );
            }
        }
    }
    println!(
        "total {} -> {}, ratio {:.3} (bound columns: order-0 entropy of the byte planes of tensor data only)",
        human(r.size),
        human(r.packed),
        pack::ratio(r.size, r.packed)
    );
    Ok(Outcome::Ok)
}
