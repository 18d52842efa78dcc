//! C ABI of dcfs (declared in `capi/dcfs.h`): one tensor of a packed file into host memory
//! or straight into CUDA device memory, for loaders that want tensors without a FUSE
//! mount (any C/C++ program; Python users have the `dcfs` package in python/).
//!
//! Nothing unwinds across the boundary: every entry point catches panics and returns -1
//! with the reason in `dcfs_last_error()`, like any other failure.

// Every unsafe block says why it is sound; clippy -D warnings makes a missing line an error.
#![warn(clippy::undocumented_unsafe_blocks)]

use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::OnceLock;

use dcfs::format::{Container, TensorEntry};
use dcfs::gpu::{Decoder, DeviceTensor, GpuMode};

/// Dimensions a `dcfs_tensor_info` can carry (safetensors and GGUF use at most 4 in
/// practice).
pub const DCFS_MAX_DIMS: usize = 8;

/// What `dcfs_tensor_info_get` reports of one tensor.
#[repr(C)]
pub struct DcfsTensorInfo {
    /// "BF16", "F32", "I8", "F8_E4M3", GGUF: "Q4_1", ... (NUL-terminated)
    pub dtype: [c_char; 16],
    /// Dimensions used in `shape` (<= DCFS_MAX_DIMS).
    pub ndim: u32,
    /// As the file states it (GGUF: ggml order).
    pub shape: [u64; DCFS_MAX_DIMS],
    /// Bytes of the tensor's data.
    pub nbytes: u64,
}

/// Opaque to C: a tensor in device memory, freed by `dcfs_device_tensor_free`.
pub struct DcfsDeviceTensor(DeviceTensor);

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_error(msg: String) {
    let c = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

/// Runs `f`, turning an `Err` or a panic into -1 plus the message.
fn guard<T>(fail: T, f: impl FnOnce() -> Result<T, String>) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            set_error(e);
            fail
        }
        Err(p) => {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_error(format!("internal error (panic): {what}"));
            fail
        }
    }
}

/// # Safety
/// `p` is null or a NUL-terminated string valid for the call.
unsafe fn text<'a>(p: *const c_char, what: &str) -> Result<&'a str, String> {
    if p.is_null() {
        return Err(format!("{what} is NULL"));
    }
    // SAFETY: non-null, and the caller promises a NUL-terminated string alive for the call.
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .map_err(|_| format!("{what} is not UTF-8"))
}

/// The container at `path` and its tensor `name`: the opening every tensor call shares.
///
/// # Safety
/// `path` and `name` are null or NUL-terminated strings valid for the call.
unsafe fn open_tensor(path: *const c_char, name: *const c_char) -> Result<(Container, TensorEntry), String> {
    // SAFETY: forwarded from this function's contract.
    let (path, name) = unsafe { (text(path, "path")?, text(name, "name")?) };
    let c = Container::open(Path::new(path)).map_err(|e| e.to_string())?;
    let t = c
        .tensors
        .iter()
        .find(|t| t.name == name)
        .cloned()
        .ok_or_else(|| format!("{}: no tensor named {name:?}", c.path().display()))?;
    Ok((c, t))
}

/// The reason for the last -1 on this thread ("" if none). Valid until the next call.
#[no_mangle]
pub extern "C" fn dcfs_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// Writes the tensor names of PATH, one per line, into BUF (at most CAP bytes including the
/// NUL). Returns the length the full list needs (without the NUL), or -1.
///
/// # Safety
/// `path` is a NUL-terminated string; `buf` is null (with `cap` 0) or writable for `cap`
/// bytes.
#[no_mangle]
pub unsafe extern "C" fn dcfs_tensor_names(path: *const c_char, buf: *mut c_char, cap: usize) -> i64 {
    guard(-1, || {
        // SAFETY: forwarded from this function's contract.
        let path = unsafe { text(path, "path") }?;
        let c = Container::open(Path::new(path)).map_err(|e| e.to_string())?;
        let list = c.tensors.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join("\n");
        if !buf.is_null() && cap > 0 {
            let n = list.len().min(cap - 1);
            // SAFETY: `buf` is writable for `cap` bytes and n + 1 <= cap.
            unsafe {
                std::ptr::copy_nonoverlapping(list.as_ptr(), buf.cast::<u8>(), n);
                *buf.add(n) = 0;
            }
        }
        Ok(list.len() as i64)
    })
}

/// Fills OUT with the dtype, shape and size of tensor NAME of PATH. 0, or -1.
///
/// # Safety
/// `path` and `name` are NUL-terminated strings; `out` points to a writable
/// `dcfs_tensor_info`.
#[no_mangle]
pub unsafe extern "C" fn dcfs_tensor_info_get(
    path: *const c_char,
    name: *const c_char,
    out: *mut DcfsTensorInfo,
) -> c_int {
    guard(-1, || {
        if out.is_null() {
            return Err("out is NULL".into());
        }
        // SAFETY: forwarded from this function's contract.
        let (_, t) = unsafe { open_tensor(path, name) }?;
        if t.shape.len() > DCFS_MAX_DIMS || t.dtype.len() >= 16 {
            return Err(format!("{}: shape or dtype does not fit dcfs_tensor_info", t.name));
        }
        let mut info = DcfsTensorInfo {
            dtype: [0; 16],
            ndim: t.shape.len() as u32,
            shape: [0; DCFS_MAX_DIMS],
            nbytes: t.len,
        };
        for (d, b) in info.dtype.iter_mut().zip(t.dtype.bytes()) {
            *d = b as c_char;
        }
        info.shape[..t.shape.len()].copy_from_slice(&t.shape);
        // SAFETY: `out` is non-null and writable per the contract.
        unsafe { out.write(info) };
        Ok(0)
    })
}

/// Decodes tensor NAME of PATH into DST, which must hold exactly info.nbytes bytes. Every
/// chunk is checked against its xxh3. 0, or -1.
///
/// # Safety
/// `path` and `name` are NUL-terminated strings; `dst` is writable for `dst_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn dcfs_decode_tensor_host(
    path: *const c_char,
    name: *const c_char,
    dst: *mut c_void,
    dst_len: u64,
) -> c_int {
    guard(-1, || {
        // SAFETY: forwarded from this function's contract.
        let (c, t) = unsafe { open_tensor(path, name) }?;
        let name = &t.name;
        if dst_len != t.len {
            return Err(format!("{name}: buffer holds {dst_len} bytes, the tensor {}", t.len));
        }
        if t.len == 0 {
            return Ok(0);
        }
        if dst.is_null() {
            return Err("dst is NULL".into());
        }
        let len = usize::try_from(t.len).map_err(|_| "tensor larger than the address space".to_string())?;
        // SAFETY: `dst` is non-null and writable for `dst_len` (= len) bytes per the contract.
        let out = unsafe { std::slice::from_raw_parts_mut(dst.cast::<u8>(), len) };
        let n = c.read_at(t.start, out).map_err(|e| e.to_string())?;
        if n != len {
            return Err(format!("{name}: the file ends {} bytes into the tensor", n));
        }
        Ok(0)
    })
}

/// One decoder per process: NVRTC compiles (or loads the cached) kernel once.
fn gpu() -> Result<&'static Decoder, String> {
    static DEC: OnceLock<Result<Decoder, String>> = OnceLock::new();
    DEC.get_or_init(|| match Decoder::new(GpuMode::On) {
        Ok(Some(d)) => Ok(d),
        Ok(None) => Err("no GPU decoder".into()),
        Err(e) => Err(e.to_string()),
    })
    .as_ref()
    .map_err(|e| e.clone())
}

/// Decodes tensor NAME into a new buffer on CUDA device 0 (primary context, the one the CUDA
/// runtime and PyTorch use). VERIFY != 0 also checks the xxh3 of GPU-decoded chunks (one
/// extra device-to-host copy) and decodes a failing chunk again on the CPU. Pass 1: with 0
/// only the kernel's structural flags guard the output, and they miss some damage (about one
/// bit flip in six in the project's emulator test), so wrong bytes can reach the buffer. The
/// Python package always passes 1. Free with dcfs_device_tensor_free. 0, or -1.
///
/// # Safety
/// `path` and `name` are NUL-terminated strings; `out` points to a writable pointer.
#[no_mangle]
pub unsafe extern "C" fn dcfs_decode_tensor_cuda(
    path: *const c_char,
    name: *const c_char,
    verify: c_int,
    out: *mut *mut DcfsDeviceTensor,
) -> c_int {
    guard(-1, || {
        if out.is_null() {
            return Err("out is NULL".into());
        }
        // SAFETY: forwarded from this function's contract.
        let (c, t) = unsafe { open_tensor(path, name) }?;
        let t = gpu()?
            .decode_tensor_to_device(&c, &t.name, verify != 0)
            .map_err(|e| e.to_string())?;
        // SAFETY: `out` is non-null and writable per the contract.
        unsafe { out.write(Box::into_raw(Box::new(DcfsDeviceTensor(t)))) };
        Ok(0)
    })
}

/// The device address of T's bytes (a CUdeviceptr), or 0 for a null T.
///
/// # Safety
/// `t` is null or a pointer from `dcfs_decode_tensor_cuda` not yet freed.
#[no_mangle]
pub unsafe extern "C" fn dcfs_device_tensor_ptr(t: *const DcfsDeviceTensor) -> u64 {
    // SAFETY: per the contract, `t` is null or a live tensor.
    unsafe { t.as_ref() }.map_or(0, |t| t.0.device_ptr())
}

/// The length of T's bytes, or 0 for a null T.
///
/// # Safety
/// `t` is null or a pointer from `dcfs_decode_tensor_cuda` not yet freed.
#[no_mangle]
pub unsafe extern "C" fn dcfs_device_tensor_len(t: *const DcfsDeviceTensor) -> u64 {
    // SAFETY: per the contract, `t` is null or a live tensor.
    unsafe { t.as_ref() }.map_or(0, |t| t.0.buffer.len() as u64)
}

/// Frees T's device buffer; a null T is ignored.
///
/// # Safety
/// `t` is null or a pointer from `dcfs_decode_tensor_cuda`, freed at most once.
#[no_mangle]
pub unsafe extern "C" fn dcfs_device_tensor_free(t: *mut DcfsDeviceTensor) {
    if !t.is_null() {
        // SAFETY: `t` came from Box::into_raw in dcfs_decode_tensor_cuda and is freed once.
        drop(unsafe { Box::from_raw(t) });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dcfs::pack::{pack_tree, NoProgress, PackOptions};

    /// A one-tensor safetensors file packed with dcfs defaults: (tempdir, container, data).
    fn packed_tensor() -> (tempfile::TempDir, CString, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("packed"));
        std::fs::create_dir(&src).unwrap();
        let data: Vec<u8> = (0..64 * 1024u32)
            .flat_map(|i| ((i % 251) as f32).to_le_bytes())
            .collect();
        let head = format!(
            r#"{{"w":{{"dtype":"F32","shape":[256,256],"data_offsets":[0,{}]}}}}"#,
            data.len()
        );
        let mut file = (head.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(head.as_bytes());
        file.extend_from_slice(&data);
        std::fs::write(src.join("m.safetensors"), &file).unwrap();
        pack_tree(&src, &dst, &PackOptions::default(), &NoProgress).unwrap();
        let path = CString::new(dst.join("m.safetensors.dcz").to_str().unwrap()).unwrap();
        (dir, path, data)
    }

    fn last_error() -> String {
        // SAFETY: dcfs_last_error returns a NUL-terminated string valid until the next call.
        unsafe { CStr::from_ptr(dcfs_last_error()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn names_info_and_host_decode_round_trip() {
        let (_dir, path, data) = packed_tensor();
        let mut names = [0 as c_char; 16];
        // SAFETY: valid strings; `names` is writable for its length.
        let n = unsafe { dcfs_tensor_names(path.as_ptr(), names.as_mut_ptr(), names.len()) };
        assert_eq!(n, 1, "{}", last_error());
        // SAFETY: the call NUL-terminated `names`.
        assert_eq!(unsafe { CStr::from_ptr(names.as_ptr()) }.to_str().unwrap(), "w");
        let mut info = std::mem::MaybeUninit::<DcfsTensorInfo>::uninit();
        // SAFETY: valid strings; `info` is writable.
        let rc = unsafe { dcfs_tensor_info_get(path.as_ptr(), c"w".as_ptr(), info.as_mut_ptr()) };
        assert_eq!(rc, 0);
        // SAFETY: the call returned 0, so it wrote `info`.
        let info = unsafe { info.assume_init() };
        assert_eq!(
            (info.ndim, &info.shape[..2], info.nbytes),
            (2, &[256u64, 256][..], data.len() as u64)
        );
        let mut out = vec![0u8; data.len()];
        // SAFETY: valid strings; `out` is writable for its length.
        let rc =
            unsafe { dcfs_decode_tensor_host(path.as_ptr(), c"w".as_ptr(), out.as_mut_ptr().cast(), out.len() as u64) };
        assert_eq!(rc, 0, "{}", last_error());
        assert!(out == data, "decoded bytes differ");
    }

    #[test]
    fn errors_return_minus_one_with_a_reason() {
        let (_dir, path, data) = packed_tensor();
        let mut out = vec![0u8; data.len()];
        // SAFETY: valid strings; `out` is writable for its length.
        let rc = unsafe {
            dcfs_decode_tensor_host(
                path.as_ptr(),
                c"nope".as_ptr(),
                out.as_mut_ptr().cast(),
                out.len() as u64,
            )
        };
        assert_eq!(rc, -1);
        assert!(last_error().contains("no tensor named"), "{}", last_error());
        // SAFETY: valid strings; `out` is writable for its length (a wrong length is refused).
        let rc = unsafe { dcfs_decode_tensor_host(path.as_ptr(), c"w".as_ptr(), out.as_mut_ptr().cast(), 7) };
        assert_eq!(rc, -1);
        assert!(last_error().contains("buffer holds 7 bytes"), "{}", last_error());
        // SAFETY: a null path is refused before it is read.
        let rc = unsafe { dcfs_tensor_names(std::ptr::null(), std::ptr::null_mut(), 0) };
        assert_eq!(rc, -1);
        assert!(last_error().contains("path is NULL"), "{}", last_error());
    }
}
