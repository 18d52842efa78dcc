//! The batch decoder `verify`/`unpack` use, and decoding a tensor into device memory.

use std::ffi::{c_void, CStr};
use std::sync::Arc;

use parking_lot::Mutex;
use rayon::prelude::*;

use super::cuda::{Cuda, DeviceBuffer, Kernel};
use super::emu::{self, WarpStats};
use super::nvrtc::Nvrtc;
use super::plan::{BatchPlan, Planner};
use super::{GpuError, GpuMode};
use crate::format::{chunk_hash, Container};

/// A batch stops growing at this much original data (device arena ~2x that).
const MAX_BATCH_OUT: u64 = 256 << 20;
/// Chunks per batch: the merge kernel puts one chunk per grid row (limit 65535).
const MAX_BATCH_CHUNKS: usize = 16_384;
/// Threads per block of both kernels (4 warps).
const BLOCK: u32 = 128;

struct CudaRt {
    cuda: Arc<Cuda>,
    decode: Kernel,
    merge: Kernel,
    target: String,
    /// The arena of the last batch, reused while large enough.
    arena: Mutex<Option<DeviceBuffer>>,
}

enum Backend {
    Cuda(CudaRt),
    /// The CPU model of the kernels: proves the pipeline without a GPU (slow). Its arena
    /// is reused between batches like the device's. With a planted bug, for tests that
    /// must see a broken kernel caught.
    Emulated(Mutex<Vec<u8>>, Option<PlantedBug>),
}

/// A kernel bug planted in the emulation, so that tests can show a broken GPU path is
/// reported (fallbacks counted, `verify --gpu` failing) rather than hidden by the CPU
/// fallback's right bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlantedBug {
    /// The kernel writes a wrong byte into the first chunk of every batch and raises no
    /// flag: only the host checksum can catch it.
    Garbage,
    /// The kernel flags every chunk of a batch as broken.
    Flags,
}

impl PlantedBug {
    /// `garbage` or `flags`.
    pub fn parse(s: &str) -> Option<PlantedBug> {
        match s {
            "garbage" => Some(PlantedBug::Garbage),
            "flags" => Some(PlantedBug::Flags),
            _ => None,
        }
    }
}

/// Decodes batches of chunks on the GPU, falling back to the CPU per chunk.
pub struct Decoder {
    backend: Backend,
}

/// What one call did, for `gpu-bench` and logs.
#[derive(Clone, Debug, Default)]
pub struct BatchStats {
    pub chunks_gpu: usize,
    pub chunks_cpu: usize,
    /// Original bytes produced by the GPU path.
    pub bytes_gpu: u64,
    /// Stored bytes uploaded.
    pub bytes_uploaded: u64,
    /// Device time of the two kernels (0 for the emulation).
    pub kernel_s: f64,
    /// Device time including the copies in and out.
    pub device_s: f64,
    pub warp: WarpStats,
    /// Chunks given to the GPU that came back unusable (flagged by the kernel, failing
    /// their checksum, or in a failed batch) and were decoded again on the CPU. Their
    /// bytes are right, but on an undamaged pack any fallback means the GPU path is broken,
    /// so `gpu-bench` and the tests fail on it rather than hide it.
    pub fallbacks: usize,
    /// Why chunks went to the CPU, with counts.
    pub cpu_reasons: std::collections::BTreeMap<&'static str, usize>,
}

/// A tensor decoded into device memory. Freed on drop.
pub struct DeviceTensor {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<u64>,
    pub buffer: DeviceBuffer,
}

impl DeviceTensor {
    /// Device address of the first byte (for `torch` via `__cuda_array_interface__`,
    /// CuPy's `UnownedMemory`, or any kernel).
    pub fn device_ptr(&self) -> u64 {
        self.buffer.device_ptr()
    }
}

impl Decoder {
    /// `Off`: `None`. `Auto`: a decoder if a driver, a device and NVRTC are there,
    /// otherwise `None` (logged at info). `On`: a decoder or the reason there is none.
    pub fn new(mode: GpuMode) -> Result<Option<Decoder>, GpuError> {
        if mode == GpuMode::Off {
            return Ok(None);
        }
        match Self::open_cuda() {
            Ok(d) => {
                tracing::info!("GPU decode on: {}", d.describe());
                Ok(Some(d))
            }
            Err(e) if mode == GpuMode::Auto => {
                tracing::info!("GPU decode off: {e}");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn open_cuda() -> Result<Decoder, GpuError> {
        let cuda = Cuda::open(0)?;
        let nvrtc = Nvrtc::load()?;
        let image = nvrtc.image_for(cuda.arch)?;
        let mut img = image.image;
        if !image.target.starts_with("sm_") && img.last() != Some(&0) {
            img.push(0);
        }
        let names: [&CStr; 2] = [c"dcfs_rans_decode", c"dcfs_merge"];
        let k = cuda.load_module(&img, &names)?;
        Ok(Decoder {
            backend: Backend::Cuda(CudaRt {
                cuda,
                decode: k[0],
                merge: k[1],
                target: image.target,
                arena: Mutex::new(None),
            }),
        })
    }

    /// A decoder running the CPU model of the kernels: the same plans, descriptors,
    /// flags and fallbacks as the GPU, for tests and for measuring per-lane work.
    pub fn emulated() -> Decoder {
        Decoder {
            backend: Backend::Emulated(Mutex::new(Vec::new()), None),
        }
    }

    /// [`emulated`](Self::emulated) with `bug` planted in its kernels (tests only: the
    /// bytes stay right through the CPU fallback, which must be counted and reported).
    pub fn emulated_with_bug(bug: PlantedBug) -> Decoder {
        Decoder {
            backend: Backend::Emulated(Mutex::new(Vec::new()), Some(bug)),
        }
    }

    pub fn describe(&self) -> String {
        match &self.backend {
            Backend::Cuda(rt) => format!(
                "{} (sm_{}{}, kernel {}, driver CUDA {}.{})",
                rt.cuda.name,
                rt.cuda.arch.0,
                rt.cuda.arch.1,
                rt.target,
                rt.cuda.driver_version / 1000,
                (rt.cuda.driver_version % 1000) / 10
            ),
            Backend::Emulated(_, None) => "CPU emulation of the GPU kernels".into(),
            Backend::Emulated(_, Some(bug)) => format!("CPU emulation of the GPU kernels, planted bug {bug:?}"),
        }
    }

    /// Decodes chunks `idx` of `c`; each result is verified against its xxh3 on the host.
    /// Chunks the GPU cannot take (zstd planes, stored raw, damaged) and any chunk the
    /// GPU flags or gets wrong are decoded on the CPU, whose error names real damage.
    pub fn decode_chunks(&self, c: &Container, idx: &[usize]) -> Vec<crate::Result<Vec<u8>>> {
        self.decode_chunks_stats(c, idx).0
    }

    /// [`decode_chunks`](Self::decode_chunks) with what it did.
    pub fn decode_chunks_stats(&self, c: &Container, idx: &[usize]) -> (Vec<crate::Result<Vec<u8>>>, BatchStats) {
        let mut stats = BatchStats::default();
        let mut results: Vec<Option<crate::Result<Vec<u8>>>> = (0..idx.len()).map(|_| None).collect();
        let payloads: Vec<crate::Result<Vec<u8>>> = idx.iter().map(|&i| c.read_payload(i)).collect();
        let mut cpu: Vec<usize> = Vec::new();
        let mut planner = Planner::new();
        let mut members = 0;
        for (k, p) in payloads.iter().enumerate() {
            match p {
                Err(_) => cpu.push(k),
                Ok(p) => {
                    planner.add(k, &c.chunks[idx[k]], p, false);
                    members += 1;
                }
            }
            if planner.out_len() >= MAX_BATCH_OUT || members >= MAX_BATCH_CHUNKS || k + 1 == idx.len() {
                let plan = std::mem::take(&mut planner).finish();
                members = 0;
                self.run_plan(c, idx, &plan, &mut results, &mut cpu, &mut stats);
            }
        }
        // Everything else on the CPU, in parallel (inside the caller's pool, if any).
        stats.chunks_cpu = cpu.len();
        let done: Vec<(usize, crate::Result<Vec<u8>>)> = cpu
            .into_par_iter()
            .map(|k| {
                let r = match &payloads[k] {
                    Err(e) => Err(crate::Error::corrupt(c.path(), Some(idx[k] as u32), e.to_string())),
                    Ok(p) => {
                        let mut out = vec![0u8; c.chunks[idx[k]].orig_len as usize];
                        c.decode_payload(idx[k], p, &mut out).map(|_| out)
                    }
                };
                (k, r)
            })
            .collect();
        for (k, r) in done {
            results[k] = Some(r);
        }
        // A payload read error keeps its own (I/O) error rather than a re-wrapped one.
        for (k, p) in payloads.into_iter().enumerate() {
            if let Err(e) = p {
                results[k] = Some(Err(e));
            }
        }
        let out = results
            .into_iter()
            .map(|r| r.expect("every chunk is decoded by one path"))
            .collect();
        (out, stats)
    }

    /// Runs one plan and sorts its chunks into results (GPU, verified) or `cpu`.
    fn run_plan(
        &self,
        c: &Container,
        idx: &[usize],
        plan: &BatchPlan,
        results: &mut [Option<crate::Result<Vec<u8>>>],
        cpu: &mut Vec<usize>,
        stats: &mut BatchStats,
    ) {
        for s in &plan.skipped {
            tracing::debug!("chunk {} on the CPU: {}", idx[s.chunk], s.reason);
            *stats.cpu_reasons.entry(s.reason).or_default() += 1;
            cpu.push(s.chunk);
        }
        if plan.slots.is_empty() {
            return;
        }
        let executed = match &self.backend {
            Backend::Emulated(arena, bug) => {
                let mut arena = arena.lock();
                let mut flags = emu::run_in(&mut arena, plan, &mut stats.warp);
                let mut out = arena[plan.out.start as usize..plan.out.end as usize].to_vec();
                match bug {
                    None => {}
                    Some(PlantedBug::Garbage) => {
                        let first = &plan.slots[0].out;
                        if first.end > first.start {
                            out[(first.start - plan.out.start) as usize] ^= 0x5a;
                        }
                    }
                    Some(PlantedBug::Flags) => flags.iter_mut().for_each(|f| *f |= 1),
                }
                Ok((out, flags))
            }
            Backend::Cuda(rt) => rt.execute(plan, stats).and_then(|(arena, flags)| {
                let mut out = vec![0u8; (plan.out.end - plan.out.start) as usize];
                arena.download(plan.out.start as usize, &mut out)?;
                Ok((out, flags))
            }),
        };
        let (out, flags) = match executed {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("GPU batch failed, decoding it on the CPU: {e}");
                *stats.cpu_reasons.entry("GPU batch failed").or_default() += plan.slots.len();
                stats.fallbacks += plan.slots.len();
                cpu.extend(plan.slots.iter().map(|s| s.chunk));
                return;
            }
        };
        stats.bytes_uploaded += plan.upload.len() as u64;
        for s in &plan.slots {
            let k = s.chunk;
            let f = flags[s.subs.clone()].iter().fold(0, |a, &b| a | b);
            let bytes = &out[(s.out.start - plan.out.start) as usize..(s.out.end - plan.out.start) as usize];
            if f != 0 {
                tracing::debug!("chunk {}: GPU flags {f:#x}; decoding on the CPU", idx[k]);
                *stats.cpu_reasons.entry("flagged by the GPU kernel").or_default() += 1;
                stats.fallbacks += 1;
                cpu.push(k);
            } else if chunk_hash(bytes) != c.chunks[idx[k]].xxh3 {
                tracing::warn!("chunk {}: GPU output fails its checksum; decoding on the CPU", idx[k]);
                *stats.cpu_reasons.entry("GPU output failed its checksum").or_default() += 1;
                stats.fallbacks += 1;
                cpu.push(k);
            } else {
                stats.chunks_gpu += 1;
                stats.bytes_gpu += bytes.len() as u64;
                results[k] = Some(Ok(bytes.to_vec()));
            }
        }
    }

    /// Decodes tensor `name` of `c` straight into a new device buffer (no host copy of
    /// the decoded bytes). rANS chunks are checked by the kernel's structural checks
    /// (final states, word counts); `verify` also copies each GPU-decoded chunk back and
    /// checks its xxh3. Chunks the GPU cannot take are decoded (and verified) on the CPU
    /// and uploaded.
    pub fn decode_tensor_to_device(&self, c: &Container, name: &str, verify: bool) -> Result<DeviceTensor, GpuError> {
        let Backend::Cuda(rt) = &self.backend else {
            return Err(GpuError::Unsupported("the CPU emulation has no device memory".into()));
        };
        let t = c
            .tensors
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| GpuError::Unsupported(format!("{}: no tensor named {name}", c.path().display())))?;
        let (start, end) = (t.start, t.start + t.len);
        let idx: Vec<usize> = (0..c.chunks.len())
            .filter(|&i| c.chunks[i].orig_offset < end && c.chunks[i].orig_end() > start)
            .collect();
        let data = |e: crate::Error| GpuError::Data(Box::new(e));
        let buf = rt.cuda.alloc(t.len as usize)?;
        // Copies the part of chunk `i` (at `bytes` of the chunk) that overlaps the tensor.
        let place = |i: usize| {
            let ch = &c.chunks[i];
            let from = ch.orig_offset.max(start);
            let to = ch.orig_end().min(end);
            (
                (from - ch.orig_offset) as usize,
                (from - start) as usize,
                (to - from) as usize,
            )
        };
        for group in idx.chunks(MAX_BATCH_CHUNKS) {
            let mut planner = Planner::new();
            let mut cpu = Vec::new();
            for (k, &i) in group.iter().enumerate() {
                let p = c.read_payload(i).map_err(data)?;
                planner.add(k, &c.chunks[i], &p, true);
            }
            let plan = planner.finish();
            cpu.extend(plan.skipped.iter().map(|s| s.chunk));
            let mut stats = BatchStats::default();
            if !plan.slots.is_empty() {
                let (arena, flags) = rt.execute(&plan, &mut stats)?;
                for s in &plan.slots {
                    let i = group[s.chunk];
                    if flags[s.subs.clone()].iter().any(|&f| f != 0) {
                        cpu.push(s.chunk);
                        continue;
                    }
                    let (skip, at, n) = place(i);
                    if verify {
                        let mut host = vec![0u8; (s.out.end - s.out.start) as usize];
                        arena.download(s.out.start as usize, &mut host)?;
                        if chunk_hash(&host) != c.chunks[i].xxh3 {
                            cpu.push(s.chunk);
                            continue;
                        }
                    }
                    rt.cuda.copy_d2d(
                        buf.device_ptr() + at as u64,
                        arena.device_ptr() + s.out.start + skip as u64,
                        n,
                    )?;
                }
            }
            for k in cpu {
                let i = group[k];
                let bytes = c.decode_chunk(i).map_err(data)?;
                let (skip, at, n) = place(i);
                buf.upload(at, &bytes[skip..skip + n])?;
            }
        }
        rt.cuda.synchronize()?;
        Ok(DeviceTensor {
            name: t.name.clone(),
            dtype: t.dtype.clone(),
            shape: t.shape.clone(),
            buffer: buf,
        })
    }
}

impl CudaRt {
    /// Uploads the plan, runs both kernels and returns the arena (still locked for the
    /// caller's copies) with the flags.
    fn execute(
        &self,
        plan: &BatchPlan,
        stats: &mut BatchStats,
    ) -> Result<(parking_lot::MappedMutexGuard<'_, DeviceBuffer>, Vec<u32>), GpuError> {
        let cuda = &self.cuda;
        let mut guard = self.arena.lock();
        if guard.as_ref().is_none_or(|a| (a.len() as u64) < plan.arena_len) {
            *guard = None; // free the old arena first
            *guard = Some(cuda.alloc(plan.arena_len as usize)?);
        }
        let arena = parking_lot::MutexGuard::map(guard, |g| g.as_mut().expect("allocated above"));
        let subs = bytes_of(&plan.subs);
        let merges = bytes_of(&plan.merges);
        let d_subs = cuda.alloc(subs.len())?;
        let d_merges = cuda.alloc(merges.len())?;
        let d_flags = cuda.alloc(4 * plan.subs.len())?;
        // Fresh device memory is undefined: zero the flags so no stale word reads as an
        // error or as clean (the host checksum still checks every output).
        let zeros = vec![0u8; 4 * plan.subs.len()];
        let mut kernel_s = 0.0;
        let device_s = cuda.timed(|| {
            arena.upload(0, &plan.upload)?;
            d_subs.upload(0, subs)?;
            d_merges.upload(0, merges)?;
            d_flags.upload(0, &zeros)?;
            kernel_s = cuda.timed(|| self.launch(plan, &arena, &d_subs, &d_merges, &d_flags))?;
            Ok(())
        })?;
        let mut fb = vec![0u8; 4 * plan.subs.len()];
        d_flags.download(0, &mut fb)?;
        let flags = fb
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        stats.kernel_s += kernel_s;
        stats.device_s += device_s;
        Ok((arena, flags))
    }

    fn launch(
        &self,
        plan: &BatchPlan,
        arena: &DeviceBuffer,
        subs: &DeviceBuffer,
        merges: &DeviceBuffer,
        flags: &DeviceBuffer,
    ) -> Result<(), GpuError> {
        let mut a = arena.device_ptr();
        let mut alen = arena.len() as u64;
        let mut s = subs.device_ptr();
        let mut n = plan.subs.len() as u32;
        let mut f = flags.device_ptr();
        if n > 0 {
            let warps_per_block = BLOCK / 32;
            let grid = n.div_ceil(warps_per_block);
            let mut params: [*mut c_void; 5] = [
                (&mut a as *mut u64).cast(),
                (&mut alen as *mut u64).cast(),
                (&mut s as *mut u64).cast(),
                (&mut n as *mut u32).cast(),
                (&mut f as *mut u64).cast(),
            ];
            self.cuda.launch(&self.decode, (grid, 1), BLOCK, &mut params)?;
        }
        let mut m = merges.device_ptr();
        let mut nm = plan.merges.len() as u32;
        if nm > 0 {
            let most = plan.merges.iter().map(|m| m.n_units).max().unwrap_or(0);
            let gx = most.div_ceil(BLOCK).clamp(1, 1024);
            let mut params: [*mut c_void; 4] = [
                (&mut a as *mut u64).cast(),
                (&mut alen as *mut u64).cast(),
                (&mut m as *mut u64).cast(),
                (&mut nm as *mut u32).cast(),
            ];
            self.cuda.launch(&self.merge, (gx, nm), BLOCK, &mut params)?;
        }
        Ok(())
    }
}

/// The bytes of a slice of plain-old-data descriptors.
fn bytes_of<T: Copy>(v: &[T]) -> &[u8] {
    // SAFETY: only used with the #[repr(C)] descriptor structs of `plan`, which are all
    // u64/u32 fields with no padding (their sizes are asserted there), so every byte is
    // initialised; the length is the slice's size in bytes.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast(), std::mem::size_of_val(v)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_without_a_gpu_is_silent_and_on_is_an_error() {
        assert!(Decoder::new(GpuMode::Off).unwrap().is_none());
        match Decoder::new(GpuMode::On) {
            Ok(d) => println!("GPU present: {}", d.expect("On gives a decoder").describe()),
            Err(e) => {
                println!("SKIP GPU: {e}");
                assert!(Decoder::new(GpuMode::Auto).unwrap().is_none());
            }
        }
    }

    #[test]
    fn descriptor_bytes_are_little_endian_fields() {
        let d = super::super::plan::SubBlockDesc {
            src: 1,
            dst: 2,
            table: 3,
            src_len: 4,
            n_sym: 5,
        };
        let b = bytes_of(std::slice::from_ref(&d));
        assert_eq!(b.len(), 32);
        assert_eq!(&b[0..8], &1u64.to_ne_bytes());
        assert_eq!(&b[24..28], &4u32.to_ne_bytes());
        assert_eq!(&b[28..32], &5u32.to_ne_bytes());
    }
}
