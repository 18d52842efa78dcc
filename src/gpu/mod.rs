//! GPU offload of rANS decoding (docs/GPU.md), built so it runs on machines without CUDA.
//!
//! * `cuda/rans_decode.cu` decodes one rANS sub-block per warp and merges the byte planes
//!   back into the original bytes; NVRTC compiles it at first use ([`nvrtc`]) with the
//!   stream layout passed as `-D` defines from [`kernel_defines`] (one source of truth).
//! * [`plan`] turns chunks into a batch: one device arena plus kernel descriptors.
//! * [`emu`] runs the exact same descriptors through a CPU model of the kernels (warp of
//!   32 lanes, ballot + prefix count word assignment), so the whole pipeline is tested
//!   bit-exact on machines with no GPU.
//! * [`cuda`] is a thin `dlopen` binding of `libcuda.so.1`; nothing links against CUDA.
//! * [`Decoder`] is what `verify`/`unpack` use: GPU when possible, CPU fallback per chunk
//!   (zstd planes, damaged data), and every chunk's xxh3 checked on the host.

pub mod calibrate;
pub mod cuda;
pub mod emu;
pub mod info;
pub mod nvrtc;
pub mod plan;

mod decoder;

pub use decoder::{BatchStats, Decoder, DeviceTensor, PlantedBug};

use crate::codec::rans_layout as L;
use crate::transform::Transform;

/// The kernel source, embedded so the binary needs no file next to it.
pub const KERNEL_SOURCE: &str = include_str!("../../cuda/rans_decode.cu");
/// Name used in NVRTC logs.
pub const KERNEL_NAME: &str = "rans_decode.cu";

/// `--gpu` policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GpuMode {
    /// Use a GPU when a driver and a device are present; otherwise decode on the CPU.
    Auto,
    /// Require a GPU: no driver or device is an error.
    On,
    /// Never touch CUDA.
    Off,
}

/// Errors of the GPU layer. Data damage is not among them: a chunk the GPU flags is
/// decoded again on the CPU, whose error names the damage.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GpuError {
    #[error("no NVIDIA driver found ({0})")]
    NoDriver(String),
    #[error("no CUDA device found")]
    NoDevice,
    #[error("NVRTC not available ({0}); install a CUDA toolkit or `pip install nvidia-cuda-nvrtc-cu12` and set DCFS_NVRTC to its libnvrtc.so.12")]
    NoNvrtc(String),
    #[error("NVRTC failed to compile {KERNEL_NAME} for {arch}: {log}")]
    Compile { arch: String, log: String },
    #[error("CUDA call {call} failed: {code} ({msg})")]
    Cuda { call: &'static str, code: i32, msg: String },
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Data(#[from] Box<crate::Error>),
}

/// The `-D` options that give the kernel its layout constants and transform ids.
pub fn kernel_defines() -> Vec<String> {
    let mut v = vec![
        format!("-DDCFS_LANES={}", L::LANES),
        format!("-DDCFS_SUB_BLOCK={}u", L::SUB_BLOCK),
        format!("-DDCFS_PROB_BITS={}", L::PROB_BITS),
        format!("-DDCFS_STATE_LOW={}u", L::STATE_LOW),
        format!("-DDCFS_WORD_BITS={}", L::WORD_BITS),
        format!("-DDCFS_STATES_BYTES={}u", L::STATES_BYTES),
    ];
    for &t in TRANSFORMS {
        v.push(format!("-DDCFS_T_{}={}", kernel_name(t), t as u8));
    }
    v
}

/// The kernel's name for a transform (`DCFS_T_<name>`). Exhaustive on purpose: a new
/// `Transform` does not build until it has a GPU entry here, a `case` in the merge kernel
/// and an arm in [`emu::merge`] (checked by `every_transform_has_a_kernel_case` and
/// `emu::tests::merge_inverts_every_transform`).
pub fn kernel_name(t: Transform) -> &'static str {
    match t {
        Transform::None => "NONE",
        Transform::Split2 => "SPLIT2",
        Transform::Bf16Exp => "BF16_EXP",
        Transform::Split4 => "SPLIT4",
        Transform::F32Exp => "F32_EXP",
        Transform::Q8_0 => "Q8_0",
        Transform::Q4_0 => "Q4_0",
        Transform::Q4_1 => "Q4_1",
    }
}

/// Every transform, from the transform list itself; the merge kernel implements them all.
pub const TRANSFORMS: &[Transform] = Transform::ALL;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defines_cover_every_guard_of_the_kernel() {
        let defs = kernel_defines();
        for line in KERNEL_SOURCE.lines() {
            if let Some(name) = line.trim().strip_prefix("#ifndef ") {
                assert!(
                    defs.iter().any(|d| d.starts_with(&format!("-D{name}="))),
                    "{name} is guarded in the kernel but not defined"
                );
            }
        }
        for &t in TRANSFORMS {
            assert_eq!(Transform::from_id(t as u8), Some(t));
        }
        assert!(defs.contains(&format!("-DDCFS_STATE_LOW={}u", L::STATE_LOW)));
    }

    /// The recipe's check for a new transform: the kernel must require its id and handle
    /// it in `dcfs_merge`. Its emulation is checked by `emu::tests::merge_inverts_every_transform`.
    #[test]
    fn every_transform_has_a_kernel_case() {
        let src: String = KERNEL_SOURCE.split_whitespace().collect::<Vec<_>>().join(" ");
        for &t in TRANSFORMS {
            let id = format!("DCFS_T_{}", kernel_name(t));
            assert!(
                src.contains(&format!("!defined({id})")),
                "the kernel does not require {id}"
            );
            assert!(src.contains(&format!("case {id}:")), "dcfs_merge has no case for {t}");
        }
    }
}
