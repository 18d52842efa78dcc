//! `dcfs gpu-info`: what NVML says about the installed GPUs. `nvml-wrapper` loads
//! `libnvidia-ml.so` at run time, so this builds and runs on machines without a driver.
//! Where NVML is missing or partial (Jetson/Tegra boards), the devices come from the CUDA
//! driver itself (`cuDeviceGet*` through `libcuda`), which every CUDA-capable system has.

use std::ffi::{c_char, c_int, c_uint, CStr};

use serde::Serialize;

use super::GpuError;

#[derive(Clone, Debug, Serialize)]
pub struct GpuInfo {
    pub index: u32,
    pub name: String,
    pub memory_total: u64,
    pub memory_free: u64,
    /// Compute capability, e.g. "9.0".
    pub compute_capability: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct SystemInfo {
    /// Which library answered: "nvml", or "libcuda" when NVML could not.
    pub source: &'static str,
    pub driver_version: String,
    /// CUDA version the driver supports, e.g. "12.4".
    pub cuda_driver_version: String,
    pub devices: Vec<GpuInfo>,
}

/// Queries NVML, and the CUDA driver where NVML fails or sees no device (Jetson). When
/// both fail, NVML's error is returned (`NoDriver` when it cannot be loaded) with the
/// driver's appended.
pub fn query() -> Result<SystemInfo, GpuError> {
    let nvml = match query_nvml() {
        Ok(s) if !s.devices.is_empty() => return Ok(s),
        other => other,
    };
    let cuda = query_cuda();
    match (nvml, cuda) {
        (_, Ok(c)) if !c.devices.is_empty() => Ok(c),
        (Ok(s), _) => Ok(s),
        (Err(GpuError::NoDriver(n)), Ok(c)) => {
            tracing::debug!("NVML: {n}; the CUDA driver sees no device");
            Ok(c)
        }
        (Err(GpuError::NoDriver(n)), Err(c)) => {
            let c = match c {
                GpuError::NoDriver(m) => m,
                other => other.to_string(),
            };
            Err(GpuError::NoDriver(format!("NVML: {n}; libcuda: {c}")))
        }
        (Err(e), _) => Err(e),
    }
}

/// `12040` -> "12.4".
fn cuda_version(v: i32) -> String {
    format!("{}.{}", v / 1000, (v % 1000) / 10)
}

/// NVML's view. `NoDriver` when NVML cannot be loaded or initialised.
fn query_nvml() -> Result<SystemInfo, GpuError> {
    let nvml = nvml_wrapper::Nvml::init().map_err(|e| GpuError::NoDriver(e.to_string()))?;
    let nerr = |e: nvml_wrapper::error::NvmlError| GpuError::Unsupported(format!("NVML: {e}"));
    let driver_version = nvml.sys_driver_version().map_err(nerr)?;
    let cv = nvml.sys_cuda_driver_version().map_err(nerr)?;
    let n = nvml.device_count().map_err(nerr)?;
    let mut devices = Vec::new();
    for i in 0..n {
        let d = nvml.device_by_index(i).map_err(nerr)?;
        let mem = d.memory_info().map_err(nerr)?;
        let cc = d.cuda_compute_capability().map_err(nerr)?;
        devices.push(GpuInfo {
            index: i,
            name: d.name().map_err(nerr)?,
            memory_total: mem.total,
            memory_free: mem.free,
            compute_capability: format!("{}.{}", cc.major, cc.minor),
        });
    }
    Ok(SystemInfo {
        source: "nvml",
        driver_version,
        cuda_driver_version: cuda_version(cv),
        devices,
    })
}

const ATTR_CC_MAJOR: c_int = 75;
const ATTR_CC_MINOR: c_int = 76;

/// The CUDA driver's view, without creating a context: names, total memory and compute
/// capabilities. The driver API has no driver version string nor (without a context) free
/// memory, so those read "unknown" and 0.
fn query_cuda() -> Result<SystemInfo, GpuError> {
    let lib = super::cuda::load_driver()?;
    macro_rules! sym {
        ($name:literal, $t:ty) => {{
            // SAFETY: a documented CUDA driver entry point; `$t` is its C signature.
            let s: Result<libloading::Symbol<$t>, _> = unsafe { lib.get($name) };
            let s = s.map_err(|e| GpuError::NoDriver(format!("libcuda lacks a symbol: {e}")))?;
            *s
        }};
    }
    let init = sym!(b"cuInit\0", unsafe extern "C" fn(c_uint) -> c_int);
    let version = sym!(b"cuDriverGetVersion\0", unsafe extern "C" fn(*mut c_int) -> c_int);
    let count = sym!(b"cuDeviceGetCount\0", unsafe extern "C" fn(*mut c_int) -> c_int);
    let get = sym!(b"cuDeviceGet\0", unsafe extern "C" fn(*mut c_int, c_int) -> c_int);
    let name = sym!(
        b"cuDeviceGetName\0",
        unsafe extern "C" fn(*mut c_char, c_int, c_int) -> c_int
    );
    let mem = sym!(
        b"cuDeviceTotalMem_v2\0",
        unsafe extern "C" fn(*mut usize, c_int) -> c_int
    );
    let attr = sym!(
        b"cuDeviceGetAttribute\0",
        unsafe extern "C" fn(*mut c_int, c_int, c_int) -> c_int
    );
    let fail = |call: &'static str, code: c_int| GpuError::Cuda {
        call,
        code,
        msg: "from the device query".into(),
    };
    // SAFETY: plain driver calls with out-pointers to locals; the name buffer's length is
    // passed, and the driver NUL-terminates within it.
    unsafe {
        let r = init(0);
        if r != 0 {
            return Err(GpuError::NoDriver(format!("cuInit returned {r}")));
        }
        let (mut v, mut n) = (0, 0);
        match (version(&mut v), count(&mut n)) {
            (0, 0) => {}
            (0, r) => return Err(fail("cuDeviceGetCount", r)),
            (r, _) => return Err(fail("cuDriverGetVersion", r)),
        }
        let mut devices = Vec::new();
        for i in 0..n.max(0) {
            let (mut d, mut total, mut maj, mut min) = (0, 0usize, 0, 0);
            let mut buf = [0 as c_char; 256];
            let calls = [
                ("cuDeviceGet", get(&mut d, i)),
                ("cuDeviceGetName", name(buf.as_mut_ptr(), buf.len() as c_int - 1, d)),
                ("cuDeviceTotalMem_v2", mem(&mut total, d)),
                ("cuDeviceGetAttribute", attr(&mut maj, ATTR_CC_MAJOR, d)),
                ("cuDeviceGetAttribute", attr(&mut min, ATTR_CC_MINOR, d)),
            ];
            if let Some(&(call, r)) = calls.iter().find(|c| c.1 != 0) {
                return Err(fail(call, r));
            }
            devices.push(GpuInfo {
                index: i as u32,
                name: CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned(),
                memory_total: total as u64,
                memory_free: 0,
                compute_capability: format!("{maj}.{min}"),
            });
        }
        Ok(SystemInfo {
            source: "libcuda",
            driver_version: "unknown".into(),
            cuda_driver_version: cuda_version(v),
            devices,
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn query_answers_or_names_the_missing_driver() {
        match super::query() {
            Ok(s) => println!(
                "{}: driver {} with {} GPUs",
                s.source,
                s.driver_version,
                s.devices.len()
            ),
            Err(e) => {
                println!("SKIP gpu-info: {e}");
                let e = e.to_string();
                assert!(e.starts_with("no NVIDIA driver found"), "{e}");
                // Without NVML the CUDA driver was asked too (the Jetson path).
                assert!(e.contains("NVML: ") && e.contains("libcuda: "), "{e}");
            }
        }
    }
}
