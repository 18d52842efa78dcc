//! `dcfs._dcfs`: the native half of the `dcfs` Python package (python/dcfs/). It opens a
//! `.dcz` container once and decodes byte ranges of the original file into Python
//! `bytearray`s, on all cores and with the GIL released; the Python half turns them into
//! numpy arrays or torch tensors. Damage raises `dcfs.CorruptError` (an `OSError`) naming
//! the file and chunk: a chunk is copied out only after its checksum matched.

use std::path::PathBuf;
use std::sync::OnceLock;

use pyo3::create_exception;
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes};
use rayon::prelude::*;

use dcfs::format::Container as Inner;
use dcfs::gpu::calibrate::{calibrate, sample, SAMPLE_BYTES};
use dcfs::gpu::{Decoder, DeviceTensor, GpuError, GpuMode};
use dcfs::model::FileKind;

create_exception!(
    dcfs,
    CorruptError,
    PyOSError,
    "A container is damaged: its bytes fail a checksum or a structural check. `filename` is \
     the container, `chunk` the damaged chunk (None when the damage is not in one chunk)."
);

/// safetensors refuses headers above 100 MB; so do we, before allocating.
const MAX_HEADER_LEN: u64 = 100_000_000;

const EIO: i32 = 5;

/// A library error as the Python exception a user can catch: `CorruptError` for damage,
/// `OSError` (mapped by errno to e.g. `FileNotFoundError`) for I/O.
fn to_py(py: Python<'_>, e: dcfs::Error) -> PyErr {
    let msg = e.to_string();
    match e {
        dcfs::Error::Corrupt { file, chunk, .. } => {
            let err = CorruptError::new_err((EIO, msg, file.display().to_string()));
            // Best effort: the message names the chunk as well.
            let _ = err.value(py).setattr("chunk", chunk);
            err
        }
        dcfs::Error::VersionTooNew { file, .. } => {
            let err = CorruptError::new_err((EIO, msg, file.display().to_string()));
            let _ = err.value(py).setattr("chunk", None::<u32>);
            err
        }
        dcfs::Error::Io { path, source } => {
            PyOSError::new_err((source.raw_os_error().unwrap_or(EIO), msg, path.display().to_string()))
        }
        _ => PyOSError::new_err(msg),
    }
}

fn gpu_to_py(py: Python<'_>, e: GpuError) -> PyErr {
    match e {
        GpuError::Data(inner) => to_py(py, *inner),
        other => PyRuntimeError::new_err(other.to_string()),
    }
}

/// A destination buffer handed to the decoding threads.
#[derive(Clone, Copy)]
struct Dest {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: each `Dest` points into a bytearray that this call keeps alive and that no Python
// code can see yet; threads write disjoint ranges of it (chunks tile the file).
unsafe impl Send for Dest {}
// SAFETY: as above; shared references only ever write disjoint ranges.
unsafe impl Sync for Dest {}

/// Decodes the original bytes `ranges[k]` (half-open, validated against the file size)
/// into `dests[k]`, each chunk once, in parallel on rayon's pool (all cores).
fn decode_ranges(c: &Inner, ranges: &[(u64, u64)], dests: &[Dest]) -> dcfs::Result<()> {
    let mut need: Vec<usize> = Vec::new();
    for &(s, e) in ranges {
        if s >= e {
            continue;
        }
        let first = c.chunks.partition_point(|ch| ch.orig_end() <= s);
        need.extend((first..c.chunks.len()).take_while(|&i| c.chunks[i].orig_offset < e));
    }
    need.sort_unstable();
    need.dedup();
    need.par_iter().try_for_each(|&i| {
        let data = c.decode_chunk(i)?;
        let ch = &c.chunks[i];
        for (&(s, e), d) in ranges.iter().zip(dests) {
            let from = s.max(ch.orig_offset);
            let to = e.min(ch.orig_end());
            if from >= to {
                continue;
            }
            let src = &data[(from - ch.orig_offset) as usize..(to - ch.orig_offset) as usize];
            let at = (from - s) as usize;
            debug_assert!(at + src.len() <= d.len);
            // SAFETY: `d` is alive and `d.len` = e - s bytes long (see `Container::read`);
            // [at, at + src.len()) lies inside it since s <= from < to <= e, and no other
            // chunk writes these bytes because chunks do not overlap.
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), d.ptr.add(at), src.len()) };
        }
        Ok(())
    })
}

/// One open `.dcz` container (the index read and checked once).
#[pyclass(frozen, module = "dcfs._dcfs")]
struct Container {
    inner: Inner,
    /// Whether the GPU decoder beat the CPU on this container's chunks; measured once.
    gpu_wins: OnceLock<bool>,
}

#[pymethods]
impl Container {
    #[new]
    fn new(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let inner = py.detach(|| Inner::open(&path)).map_err(|e| to_py(py, e))?;
        Ok(Container {
            inner,
            gpu_wins: OnceLock::new(),
        })
    }

    /// The container's path.
    #[getter]
    fn path(&self) -> PathBuf {
        self.inner.path().to_path_buf()
    }

    /// Size of the original file in bytes.
    #[getter]
    fn size(&self) -> u64 {
        self.inner.meta.size
    }

    /// Whether the container holds a safetensors file (tensors indexed by name).
    #[getter]
    fn is_safetensors(&self) -> bool {
        self.inner.meta.kind == FileKind::Safetensors
    }

    /// `(name, dtype, shape, start, nbytes)` per tensor, in file order; `start` is the
    /// offset in the original file.
    fn tensors(&self) -> Vec<(String, String, Vec<u64>, u64, u64)> {
        self.inner
            .tensors
            .iter()
            .map(|t| (t.name.clone(), t.dtype.clone(), t.shape.clone(), t.start, t.len))
            .collect()
    }

    /// `(orig_offset, orig_len, payload_offset, payload_len)` per chunk, in order: where
    /// each chunk sits in the original file and in the container (for tests and tools).
    fn chunks(&self) -> Vec<(u64, u32, u64, u32)> {
        self.inner
            .chunks
            .iter()
            .map(|c| (c.orig_offset, c.orig_len, c.payload_offset, c.payload_len))
            .collect()
    }

    /// The safetensors JSON header of the original file, as bytes.
    fn header<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let c = &self.inner;
        let bad = |what: String| to_py(py, dcfs::Error::corrupt(c.path(), None, what));
        let mut len = [0u8; 8];
        let n = py.detach(|| c.read_at(0, &mut len)).map_err(|e| to_py(py, e))?;
        if n != 8 {
            return Err(bad("shorter than a safetensors header".into()));
        }
        let hlen = u64::from_le_bytes(len);
        if hlen > MAX_HEADER_LEN || hlen > c.meta.size - 8 {
            return Err(bad(format!("safetensors header length {hlen} out of range")));
        }
        let mut head = vec![0u8; hlen as usize];
        let n = py.detach(|| c.read_at(8, &mut head)).map_err(|e| to_py(py, e))?;
        if n != head.len() {
            return Err(bad("safetensors header cut short".into()));
        }
        Ok(PyBytes::new(py, &head))
    }

    /// The original bytes of each half-open range `(start, end)`, one `bytearray` each.
    /// Decodes every chunk the ranges touch once, on all cores, with the GIL released.
    fn read<'py>(&self, py: Python<'py>, ranges: Vec<(u64, u64)>) -> PyResult<Vec<Bound<'py, PyByteArray>>> {
        let size = self.inner.meta.size;
        let mut out = Vec::with_capacity(ranges.len());
        let mut dests = Vec::with_capacity(ranges.len());
        for &(s, e) in &ranges {
            if s > e || e > size {
                return Err(PyValueError::new_err(format!(
                    "{}: range {s}..{e} outside the file (0..{size})",
                    self.inner.path().display()
                )));
            }
            let len =
                usize::try_from(e - s).map_err(|_| PyValueError::new_err("range larger than the address space"))?;
            let b = PyByteArray::new_with(py, len, |_| Ok(()))?;
            // SAFETY: the bytearray was just made here and is not yet visible to Python, so
            // nothing resizes or reads it while the GIL is released; `out` keeps it alive.
            let ptr = unsafe { b.as_bytes_mut() }.as_mut_ptr();
            dests.push(Dest { ptr, len });
            out.push(b);
        }
        let c = &self.inner;
        py.detach(|| decode_ranges(c, &ranges, &dests))
            .map_err(|e| to_py(py, e))?;
        Ok(out)
    }

    /// Whether `read_cuda` can decode on the GPU: a driver, device 0 and NVRTC are present
    /// and a calibration on this container's own chunks found the GPU faster than the CPU
    /// (`dcfs mount --gpu auto`'s rule). Measured once per container, on first call.
    fn gpu_usable(&self, py: Python<'_>) -> bool {
        *self.gpu_wins.get_or_init(|| {
            py.detach(|| {
                let Some(dec) = gpu_decoder() else { return false };
                let idx = sample(&self.inner, SAMPLE_BYTES);
                !idx.is_empty() && calibrate(dec, &self.inner, &idx).is_ok_and(|cal| cal.gpu_wins())
            })
        })
    }

    /// Tensor `name` decoded on CUDA device 0 into a new device buffer (rANS on the GPU,
    /// each GPU-decoded chunk copied back and checked against its checksum; the rest on
    /// the CPU and uploaded).
    fn read_cuda(&self, py: Python<'_>, name: &str) -> PyResult<DeviceBuffer> {
        let dec = gpu_decoder().ok_or_else(|| PyRuntimeError::new_err("no GPU decoder on this machine"))?;
        let t = py
            .detach(|| dec.decode_tensor_to_device(&self.inner, name, true))
            .map_err(|e| gpu_to_py(py, e))?;
        Ok(DeviceBuffer(t))
    }
}

/// The process's GPU decoder on device 0, if a driver, a device and NVRTC are present.
fn gpu_decoder() -> Option<&'static Decoder> {
    static DEC: OnceLock<Option<Decoder>> = OnceLock::new();
    DEC.get_or_init(|| Decoder::new(GpuMode::Auto).ok().flatten()).as_ref()
}

/// A tensor in CUDA device memory, freed when this object is (torch keeps it alive
/// through `__cuda_array_interface__`'s owner).
#[pyclass(frozen, module = "dcfs._dcfs")]
struct DeviceBuffer(DeviceTensor);

#[pymethods]
impl DeviceBuffer {
    #[getter]
    fn ptr(&self) -> u64 {
        self.0.device_ptr()
    }

    #[getter]
    fn nbytes(&self) -> usize {
        self.0.buffer.len()
    }
}

#[pymodule]
fn _dcfs(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Container>()?;
    m.add_class::<DeviceBuffer>()?;
    m.add("CorruptError", m.py().get_type::<CorruptError>())?;
    Ok(())
}
