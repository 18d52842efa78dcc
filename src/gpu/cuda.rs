//! A minimal binding of the CUDA driver API, loaded with `dlopen("libcuda.so.1")` at run
//! time so the binary neither links against CUDA nor needs it installed. Only the calls
//! the decoder makes are bound.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::sync::Arc;

use libloading::Library;

use super::GpuError;

type CuResult = c_int;
type CuDevice = c_int;
type CuContext = *mut c_void;
type CuModule = *mut c_void;
type CuFunction = *mut c_void;
type CuEvent = *mut c_void;
pub type DevicePtr = u64;

const CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: c_int = 75;
const CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: c_int = 76;

/// Function pointers resolved from `libcuda.so.1`; valid while `_lib` lives.
struct Api {
    init: unsafe extern "C" fn(c_uint) -> CuResult,
    driver_version: unsafe extern "C" fn(*mut c_int) -> CuResult,
    device_count: unsafe extern "C" fn(*mut c_int) -> CuResult,
    device_get: unsafe extern "C" fn(*mut CuDevice, c_int) -> CuResult,
    device_name: unsafe extern "C" fn(*mut c_char, c_int, CuDevice) -> CuResult,
    device_attr: unsafe extern "C" fn(*mut c_int, c_int, CuDevice) -> CuResult,
    ctx_retain: unsafe extern "C" fn(*mut CuContext, CuDevice) -> CuResult,
    ctx_release: unsafe extern "C" fn(CuDevice) -> CuResult,
    ctx_set_current: unsafe extern "C" fn(CuContext) -> CuResult,
    ctx_sync: unsafe extern "C" fn() -> CuResult,
    module_load_data: unsafe extern "C" fn(*mut CuModule, *const c_void) -> CuResult,
    module_get_function: unsafe extern "C" fn(*mut CuFunction, CuModule, *const c_char) -> CuResult,
    mem_alloc: unsafe extern "C" fn(*mut DevicePtr, usize) -> CuResult,
    mem_free: unsafe extern "C" fn(DevicePtr) -> CuResult,
    htod: unsafe extern "C" fn(DevicePtr, *const c_void, usize) -> CuResult,
    dtoh: unsafe extern "C" fn(*mut c_void, DevicePtr, usize) -> CuResult,
    dtod: unsafe extern "C" fn(DevicePtr, DevicePtr, usize) -> CuResult,
    #[allow(clippy::type_complexity)]
    launch: unsafe extern "C" fn(
        CuFunction,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        *mut c_void,
        *mut *mut c_void,
        *mut *mut c_void,
    ) -> CuResult,
    event_create: unsafe extern "C" fn(*mut CuEvent, c_uint) -> CuResult,
    event_record: unsafe extern "C" fn(CuEvent, *mut c_void) -> CuResult,
    event_sync: unsafe extern "C" fn(CuEvent) -> CuResult,
    event_elapsed: unsafe extern "C" fn(*mut f32, CuEvent, CuEvent) -> CuResult,
    event_destroy: unsafe extern "C" fn(CuEvent) -> CuResult,
    error_string: unsafe extern "C" fn(CuResult, *mut *const c_char) -> CuResult,
    _lib: Library,
}

/// The driver with one device's primary context retained.
pub struct Cuda {
    api: Api,
    device: CuDevice,
    ctx: CuContext,
    pub name: String,
    /// Compute capability (major, minor).
    pub arch: (i32, i32),
    /// `cuDriverGetVersion`, e.g. 12040 for CUDA 12.4.
    pub driver_version: i32,
}

// SAFETY: the primary context may be made current on any thread (every entry point
// below does so first); the function pointers and the library handle are immutable.
unsafe impl Send for Cuda {}
// SAFETY: as above; the driver API is thread-safe for these calls.
unsafe impl Sync for Cuda {}

/// Where the driver library is looked for, in order: the soname through the loader's path,
/// then the L4T directory, where Jetson images keep `libcuda.so.1` and which containers do
/// not always put on the loader's path. Absolute paths only name files of the driver
/// install, never anything under the user's control.
pub const DRIVER_CANDIDATES: &[&str] = &[
    "libcuda.so.1",
    #[cfg(target_arch = "aarch64")]
    "/usr/lib/aarch64-linux-gnu/tegra/libcuda.so.1",
    #[cfg(target_arch = "aarch64")]
    "/usr/lib/aarch64-linux-gnu/nvidia/libcuda.so.1",
];

/// Opens the first of [`DRIVER_CANDIDATES`] that loads; `NoDriver` naming every failure.
pub(crate) fn load_driver() -> Result<Library, GpuError> {
    let mut errs = Vec::new();
    for c in DRIVER_CANDIDATES {
        // SAFETY: loading the NVIDIA driver library runs its initialisers, which is what
        // every CUDA program does; we pass no callbacks.
        match unsafe { Library::new(c) } {
            Ok(lib) => return Ok(lib),
            Err(e) => errs.push(e.to_string()),
        }
    }
    Err(GpuError::NoDriver(errs.join("; ")))
}

macro_rules! sym {
    ($lib:expr, $name:literal) => {{
        // SAFETY: the symbol is a documented CUDA driver entry point and the field's type
        // is its C signature from cuda.h.
        let s = unsafe { $lib.get($name) };
        let s = s.map_err(|e| GpuError::NoDriver(format!("libcuda.so.1 lacks a symbol: {e}")))?;
        *s
    }};
}

impl Cuda {
    /// Loads the driver and opens device `ordinal`. `NoDriver` when `libcuda.so.1` is not
    /// there (the normal case on a machine without an NVIDIA GPU), `NoDevice` when the
    /// driver reports none.
    pub fn open(ordinal: i32) -> Result<Arc<Cuda>, GpuError> {
        // SAFETY: loading the NVIDIA driver library runs its initialisers, which is what
        // every CUDA program does; we pass no callbacks.
        let lib = load_driver()?;
        let api = Api {
            init: sym!(lib, b"cuInit\0"),
            driver_version: sym!(lib, b"cuDriverGetVersion\0"),
            device_count: sym!(lib, b"cuDeviceGetCount\0"),
            device_get: sym!(lib, b"cuDeviceGet\0"),
            device_name: sym!(lib, b"cuDeviceGetName\0"),
            device_attr: sym!(lib, b"cuDeviceGetAttribute\0"),
            ctx_retain: sym!(lib, b"cuDevicePrimaryCtxRetain\0"),
            ctx_release: sym!(lib, b"cuDevicePrimaryCtxRelease_v2\0"),
            ctx_set_current: sym!(lib, b"cuCtxSetCurrent\0"),
            ctx_sync: sym!(lib, b"cuCtxSynchronize\0"),
            module_load_data: sym!(lib, b"cuModuleLoadData\0"),
            module_get_function: sym!(lib, b"cuModuleGetFunction\0"),
            mem_alloc: sym!(lib, b"cuMemAlloc_v2\0"),
            mem_free: sym!(lib, b"cuMemFree_v2\0"),
            htod: sym!(lib, b"cuMemcpyHtoD_v2\0"),
            dtoh: sym!(lib, b"cuMemcpyDtoH_v2\0"),
            dtod: sym!(lib, b"cuMemcpyDtoD_v2\0"),
            launch: sym!(lib, b"cuLaunchKernel\0"),
            event_create: sym!(lib, b"cuEventCreate\0"),
            event_record: sym!(lib, b"cuEventRecord\0"),
            event_sync: sym!(lib, b"cuEventSynchronize\0"),
            event_elapsed: sym!(lib, b"cuEventElapsedTime\0"),
            event_destroy: sym!(lib, b"cuEventDestroy_v2\0"),
            error_string: sym!(lib, b"cuGetErrorString\0"),
            _lib: lib,
        };
        let mut me = Cuda {
            api,
            device: 0,
            ctx: std::ptr::null_mut(),
            name: String::new(),
            arch: (0, 0),
            driver_version: 0,
        };
        // SAFETY: plain driver calls with valid out-pointers to locals.
        unsafe {
            let r = (me.api.init)(0);
            if r != 0 {
                return Err(GpuError::NoDriver(format!("cuInit: {}", me.err_str(r))));
            }
            let mut v = 0;
            me.check("cuDriverGetVersion", (me.api.driver_version)(&mut v))?;
            me.driver_version = v;
            let mut n = 0;
            me.check("cuDeviceGetCount", (me.api.device_count)(&mut n))?;
            if n <= ordinal {
                return Err(GpuError::NoDevice);
            }
            let mut dev = 0;
            me.check("cuDeviceGet", (me.api.device_get)(&mut dev, ordinal))?;
            me.device = dev;
            let mut name = [0 as c_char; 256];
            me.check(
                "cuDeviceGetName",
                (me.api.device_name)(name.as_mut_ptr(), 256, me.device),
            )?;
            me.name = CStr::from_ptr(name.as_ptr()).to_string_lossy().into_owned();
            let (mut maj, mut min) = (0, 0);
            me.check(
                "cuDeviceGetAttribute",
                (me.api.device_attr)(&mut maj, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, me.device),
            )?;
            me.check(
                "cuDeviceGetAttribute",
                (me.api.device_attr)(&mut min, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, me.device),
            )?;
            me.arch = (maj, min);
            let mut ctx = std::ptr::null_mut();
            me.check("cuDevicePrimaryCtxRetain", (me.api.ctx_retain)(&mut ctx, me.device))?;
            me.ctx = ctx;
        }
        Ok(Arc::new(me))
    }

    fn err_str(&self, r: CuResult) -> String {
        let mut p: *const c_char = std::ptr::null();
        // SAFETY: cuGetErrorString writes a pointer to a static string or leaves it null.
        unsafe {
            if (self.api.error_string)(r, &mut p) != 0 || p.is_null() {
                return format!("CUDA error {r}");
            }
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    }

    fn check(&self, call: &'static str, r: CuResult) -> Result<(), GpuError> {
        if r == 0 {
            Ok(())
        } else {
            Err(GpuError::Cuda {
                call,
                code: r,
                msg: self.err_str(r),
            })
        }
    }

    /// Makes the primary context current on the calling thread.
    pub fn bind(&self) -> Result<(), GpuError> {
        // SAFETY: `ctx` is the retained primary context of `device`, alive until drop.
        self.check("cuCtxSetCurrent", unsafe { (self.api.ctx_set_current)(self.ctx) })
    }

    /// Loads a cubin or NUL-terminated PTX image and resolves `names`.
    pub fn load_module(&self, image: &[u8], names: &[&CStr]) -> Result<Vec<Kernel>, GpuError> {
        self.bind()?;
        let mut m: CuModule = std::ptr::null_mut();
        // SAFETY: `image` is a complete cubin or a NUL-terminated PTX text (the NVRTC
        // layer guarantees both) and outlives the call; the driver copies it.
        self.check("cuModuleLoadData", unsafe {
            (self.api.module_load_data)(&mut m, image.as_ptr().cast())
        })?;
        let mut out = Vec::with_capacity(names.len());
        for n in names {
            let mut f: CuFunction = std::ptr::null_mut();
            // SAFETY: `m` was just loaded; `n` is NUL-terminated.
            self.check("cuModuleGetFunction", unsafe {
                (self.api.module_get_function)(&mut f, m, n.as_ptr())
            })?;
            out.push(Kernel(f));
        }
        Ok(out)
    }

    pub fn alloc(self: &Arc<Self>, len: usize) -> Result<DeviceBuffer, GpuError> {
        self.bind()?;
        let mut p = 0;
        // SAFETY: out-pointer to a local; a zero-length request is rounded up to 1.
        self.check("cuMemAlloc", unsafe { (self.api.mem_alloc)(&mut p, len.max(1)) })?;
        Ok(DeviceBuffer {
            cuda: self.clone(),
            ptr: p,
            len,
        })
    }

    /// Copies `src` to device address `dst`, which must have `src.len()` bytes.
    pub fn upload(&self, dst: DevicePtr, src: &[u8]) -> Result<(), GpuError> {
        if src.is_empty() {
            return Ok(());
        }
        self.bind()?;
        // SAFETY: callers pass a `dst` inside an allocation of at least `src.len()` bytes
        // (DeviceBuffer::upload checks); `src` is a valid host slice.
        self.check("cuMemcpyHtoD", unsafe {
            (self.api.htod)(dst, src.as_ptr().cast(), src.len())
        })
    }

    /// Copies `dst.len()` bytes from device address `src`.
    pub fn download(&self, dst: &mut [u8], src: DevicePtr) -> Result<(), GpuError> {
        if dst.is_empty() {
            return Ok(());
        }
        self.bind()?;
        // SAFETY: as in `upload`, the other way round.
        self.check("cuMemcpyDtoH", unsafe {
            (self.api.dtoh)(dst.as_mut_ptr().cast(), src, dst.len())
        })
    }

    pub fn copy_d2d(&self, dst: DevicePtr, src: DevicePtr, len: usize) -> Result<(), GpuError> {
        if len == 0 {
            return Ok(());
        }
        self.bind()?;
        // SAFETY: callers keep both ranges inside live allocations.
        self.check("cuMemcpyDtoD", unsafe { (self.api.dtod)(dst, src, len) })
    }

    /// Launches `k` on the default stream. `params` are pointers to the argument values,
    /// in the kernel's parameter order and types.
    pub fn launch(&self, k: &Kernel, grid: (u32, u32), block: u32, params: &mut [*mut c_void]) -> Result<(), GpuError> {
        self.bind()?;
        // SAFETY: `k` comes from a loaded module; `params` point at live locals of the
        // caller whose types match the kernel signature (checked by the callers' tests of
        // the #[repr(C)] mirrors).
        self.check("cuLaunchKernel", unsafe {
            (self.api.launch)(
                k.0,
                grid.0,
                grid.1,
                1,
                block,
                1,
                1,
                0,
                std::ptr::null_mut(),
                params.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        })
    }

    pub fn synchronize(&self) -> Result<(), GpuError> {
        self.bind()?;
        // SAFETY: no arguments.
        self.check("cuCtxSynchronize", unsafe { (self.api.ctx_sync)() })
    }

    /// Runs `f` (which launches work on the default stream) between two events and
    /// returns the device time in seconds.
    pub fn timed(&self, f: impl FnOnce() -> Result<(), GpuError>) -> Result<f64, GpuError> {
        self.bind()?;
        let (mut a, mut b): (CuEvent, CuEvent) = (std::ptr::null_mut(), std::ptr::null_mut());
        // SAFETY: out-pointers to locals; the events are destroyed below on every path.
        unsafe {
            self.check("cuEventCreate", (self.api.event_create)(&mut a, 0))?;
            if let Err(e) = self.check("cuEventCreate", (self.api.event_create)(&mut b, 0)) {
                (self.api.event_destroy)(a);
                return Err(e);
            }
        }
        let r = (|| {
            // SAFETY: both events are live; the null stream is the legacy default stream.
            unsafe { self.check("cuEventRecord", (self.api.event_record)(a, std::ptr::null_mut()))? };
            f()?;
            let mut ms = 0f32;
            // SAFETY: as above.
            unsafe {
                self.check("cuEventRecord", (self.api.event_record)(b, std::ptr::null_mut()))?;
                self.check("cuEventSynchronize", (self.api.event_sync)(b))?;
                self.check("cuEventElapsedTime", (self.api.event_elapsed)(&mut ms, a, b))?;
            }
            Ok(ms as f64 / 1e3)
        })();
        // SAFETY: created above, not used after this.
        unsafe {
            (self.api.event_destroy)(a);
            (self.api.event_destroy)(b);
        }
        r
    }
}

impl Drop for Cuda {
    fn drop(&mut self) {
        if self.ctx.is_null() {
            return; // `open` failed before retaining it
        }
        // SAFETY: releases the reference taken by cuDevicePrimaryCtxRetain in `open`.
        unsafe {
            (self.api.ctx_release)(self.device);
        }
    }
}

/// A kernel handle from a loaded module (modules are never unloaded: they live as long
/// as the process's context).
#[derive(Clone, Copy)]
pub struct Kernel(CuFunction);
// SAFETY: a CUfunction is an immutable handle usable from any thread with the context.
unsafe impl Send for Kernel {}
// SAFETY: as above.
unsafe impl Sync for Kernel {}

/// Device memory freed on drop.
pub struct DeviceBuffer {
    cuda: Arc<Cuda>,
    ptr: DevicePtr,
    len: usize,
}

impl DeviceBuffer {
    /// The device address, for kernels or for a framework that wraps foreign memory.
    pub fn device_ptr(&self) -> DevicePtr {
        self.ptr
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn upload(&self, at: usize, src: &[u8]) -> Result<(), GpuError> {
        if at.checked_add(src.len()).is_none_or(|e| e > self.len) {
            return Err(GpuError::Unsupported("upload past the end of a device buffer".into()));
        }
        self.cuda.upload(self.ptr + at as u64, src)
    }

    pub fn download(&self, at: usize, dst: &mut [u8]) -> Result<(), GpuError> {
        if at.checked_add(dst.len()).is_none_or(|e| e > self.len) {
            return Err(GpuError::Unsupported("download past the end of a device buffer".into()));
        }
        self.cuda.download(dst, self.ptr + at as u64)
    }

    /// Copies the whole buffer to host memory.
    pub fn to_host(&self) -> Result<Vec<u8>, GpuError> {
        let mut v = vec![0u8; self.len];
        self.download(0, &mut v)?;
        Ok(v)
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        if self.cuda.bind().is_ok() {
            // SAFETY: `ptr` came from cuMemAlloc and is freed exactly once, here.
            unsafe {
                (self.cuda.api.mem_free)(self.ptr);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opening_reports_a_missing_driver_clearly() {
        match Cuda::open(0) {
            Ok(c) => println!("CUDA device: {} sm_{}{}", c.name, c.arch.0, c.arch.1),
            Err(e) => {
                println!("SKIP CUDA tests: {e}");
                assert!(matches!(e, GpuError::NoDriver(_) | GpuError::NoDevice), "{e}");
                assert!(e.to_string().starts_with("no NVIDIA driver found") || matches!(e, GpuError::NoDevice));
            }
        }
    }
}
