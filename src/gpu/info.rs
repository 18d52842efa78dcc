//! `dcfs gpu-info`: what NVML says about the installed GPUs. `nvml-wrapper` loads
//! `libnvidia-ml.so` at run time, so this builds and runs on machines without a driver.

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
    pub driver_version: String,
    /// CUDA version the driver supports, e.g. "12.4".
    pub cuda_driver_version: String,
    pub devices: Vec<GpuInfo>,
}

/// Queries NVML. `NoDriver` when NVML cannot be loaded or initialised.
pub fn query() -> Result<SystemInfo, GpuError> {
    let nvml = nvml_wrapper::Nvml::init().map_err(|e| GpuError::NoDriver(format!("NVML: {e}")))?;
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
        driver_version,
        cuda_driver_version: format!("{}.{}", cv / 1000, (cv % 1000) / 10),
        devices,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn query_answers_or_names_the_missing_driver() {
        match super::query() {
            Ok(s) => println!("NVML: driver {} with {} GPUs", s.driver_version, s.devices.len()),
            Err(e) => {
                println!("SKIP NVML: {e}");
                assert!(e.to_string().starts_with("no NVIDIA driver found"), "{e}");
            }
        }
    }
}
