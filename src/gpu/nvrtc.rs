//! NVRTC, loaded at run time: compiles `cuda/rans_decode.cu` for the device at first use
//! and caches the image on disk, keyed by target, kernel hash and NVRTC version, so later
//! runs skip the compile.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::{Path, PathBuf};

use libloading::Library;

use super::{kernel_defines, GpuError, KERNEL_NAME, KERNEL_SOURCE};

type NvrtcResult = c_int;
type Program = *mut c_void;

/// What NVRTC produced.
#[derive(Clone, Debug)]
pub struct Compiled {
    /// Target, e.g. `sm_90` (a cubin) or `compute_90` (PTX, NUL-terminated).
    pub target: String,
    pub image: Vec<u8>,
    /// The compile log (empty when clean).
    pub log: String,
}

/// A loaded `libnvrtc`.
pub struct Nvrtc {
    version: (i32, i32),
    pub path: String,
    create: unsafe extern "C" fn(
        *mut Program,
        *const c_char,
        *const c_char,
        c_int,
        *const *const c_char,
        *const *const c_char,
    ) -> NvrtcResult,
    compile: unsafe extern "C" fn(Program, c_int, *const *const c_char) -> NvrtcResult,
    log_size: unsafe extern "C" fn(Program, *mut usize) -> NvrtcResult,
    log: unsafe extern "C" fn(Program, *mut c_char) -> NvrtcResult,
    ptx_size: unsafe extern "C" fn(Program, *mut usize) -> NvrtcResult,
    ptx: unsafe extern "C" fn(Program, *mut c_char) -> NvrtcResult,
    cubin_size: unsafe extern "C" fn(Program, *mut usize) -> NvrtcResult,
    cubin: unsafe extern "C" fn(Program, *mut c_char) -> NvrtcResult,
    destroy: unsafe extern "C" fn(*mut Program) -> NvrtcResult,
    n_archs: unsafe extern "C" fn(*mut c_int) -> NvrtcResult,
    archs: unsafe extern "C" fn(*mut c_int) -> NvrtcResult,
    _lib: Library,
}

/// The sonames NVRTC ships under, newest first: CUDA 12 (`.so.12`), CUDA 11.2 to 11.8
/// (all `.so.11.2`: JetPack 5 on Jetson Orin/Xavier), then the unversioned developer link.
/// CUDA 11.0/11.1 lack `nvrtcGetSupportedArchs`, so their libraries fail the symbol check.
pub const SONAMES: &[&str] = &["libnvrtc.so.12", "libnvrtc.so.11.2", "libnvrtc.so"];

/// Toolkit library directories tried after the loader's path: JetPack and the CUDA
/// installers put NVRTC there without always registering it with the loader.
const TOOLKIT_DIRS: &[&str] = &["/usr/local/cuda/lib64", "/usr/local/cuda/targets/aarch64-linux/lib"];

/// Where to look for libnvrtc: `$DCFS_NVRTC`, each of [`SONAMES`] through the loader's
/// path, then under `$CUDA_HOME/lib64` and the toolkit directories (existing files only),
/// then the pip wheel (`nvidia-cuda-nvrtc-cu12`) inside `$VIRTUAL_ENV` or `$DCFS_VENV`.
pub fn candidates() -> Vec<String> {
    let mut v = Vec::new();
    if let Ok(p) = std::env::var("DCFS_NVRTC") {
        v.push(p);
    }
    v.extend(SONAMES.iter().map(|s| s.to_string()));
    let home = std::env::var_os("CUDA_HOME").map(|h| PathBuf::from(h).join("lib64"));
    v.extend(in_dirs(home.into_iter().chain(TOOLKIT_DIRS.iter().map(PathBuf::from))));
    for var in ["VIRTUAL_ENV", "DCFS_VENV"] {
        if let Ok(venv) = std::env::var(var) {
            v.extend(venv_nvrtc(Path::new(&venv)));
        }
    }
    v
}

/// The existing files named by one of [`SONAMES`] inside `dirs`, in order.
fn in_dirs(dirs: impl Iterator<Item = PathBuf>) -> Vec<String> {
    dirs.flat_map(|d| SONAMES.iter().map(move |so| d.join(so)))
        .filter(|p| p.is_file())
        .map(|p| p.to_string_lossy().into_owned())
        .collect()
}

/// NVRTC libraries of the pip wheels (`nvidia-cuda-nvrtc-cu12` or `-cu11`) inside a
/// virtual environment.
pub fn venv_nvrtc(venv: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(venv.join("lib")) else {
        return Vec::new();
    };
    in_dirs(
        rd.flatten()
            .map(|e| e.path().join("site-packages/nvidia/cuda_nvrtc/lib")),
    )
}

macro_rules! sym {
    ($lib:expr, $name:literal) => {{
        // SAFETY: a documented NVRTC entry point; the field type is its C signature.
        let s = unsafe { $lib.get($name) }.map_err(|e| GpuError::NoNvrtc(format!("libnvrtc lacks a symbol: {e}")))?;
        *s
    }};
}

impl Nvrtc {
    /// Loads the first of [`candidates`] that opens.
    pub fn load() -> Result<Nvrtc, GpuError> {
        let mut errs = Vec::new();
        for c in candidates() {
            match Self::load_from(&c) {
                Ok(n) => return Ok(n),
                Err(e) => errs.push(e.to_string()),
            }
        }
        Err(GpuError::NoNvrtc(errs.join("; ")))
    }

    pub fn load_from(path: &str) -> Result<Nvrtc, GpuError> {
        // SAFETY: loading NVRTC runs only its own initialisers.
        let lib = unsafe { Library::new(path) }.map_err(|e| GpuError::NoNvrtc(format!("{path}: {e}")))?;
        let version_fn: unsafe extern "C" fn(*mut c_int, *mut c_int) -> NvrtcResult = sym!(lib, b"nvrtcVersion\0");
        let mut version = (0, 0);
        // SAFETY: out-pointers to locals.
        unsafe { version_fn(&mut version.0, &mut version.1) };
        Ok(Nvrtc {
            version,
            path: path.to_string(),
            create: sym!(lib, b"nvrtcCreateProgram\0"),
            compile: sym!(lib, b"nvrtcCompileProgram\0"),
            log_size: sym!(lib, b"nvrtcGetProgramLogSize\0"),
            log: sym!(lib, b"nvrtcGetProgramLog\0"),
            ptx_size: sym!(lib, b"nvrtcGetPTXSize\0"),
            ptx: sym!(lib, b"nvrtcGetPTX\0"),
            cubin_size: sym!(lib, b"nvrtcGetCUBINSize\0"),
            cubin: sym!(lib, b"nvrtcGetCUBIN\0"),
            destroy: sym!(lib, b"nvrtcDestroyProgram\0"),
            n_archs: sym!(lib, b"nvrtcGetNumSupportedArchs\0"),
            archs: sym!(lib, b"nvrtcGetSupportedArchs\0"),
            _lib: lib,
        })
    }

    pub fn version(&self) -> (i32, i32) {
        self.version
    }

    /// Architectures this NVRTC can target, e.g. `[50, 52, ..., 90]`.
    pub fn supported_archs(&self) -> Vec<i32> {
        let mut n = 0;
        // SAFETY: out-pointer to a local, then a buffer of exactly `n` ints.
        unsafe {
            if (self.n_archs)(&mut n) != 0 || n <= 0 {
                return Vec::new();
            }
            let mut v = vec![0; n as usize];
            if (self.archs)(v.as_mut_ptr()) != 0 {
                return Vec::new();
            }
            v
        }
    }

    /// Compiles the kernel for `target` (`sm_XY` gives a cubin, `compute_XY` PTX) with
    /// the layout defines plus `extra` options.
    pub fn compile(&self, target: &str, extra: &[&str]) -> Result<Compiled, GpuError> {
        let src = CString::new(KERNEL_SOURCE).expect("kernel source has no NUL");
        let name = CString::new(KERNEL_NAME).expect("no NUL");
        let mut opts: Vec<CString> = vec![CString::new(format!("--gpu-architecture={target}")).expect("no NUL")];
        opts.extend(kernel_defines().into_iter().map(|d| CString::new(d).expect("no NUL")));
        opts.extend(extra.iter().map(|o| CString::new(*o).expect("no NUL")));
        let ptrs: Vec<*const c_char> = opts.iter().map(|o| o.as_ptr()).collect();
        let mut prog: Program = std::ptr::null_mut();
        let fail = |what: &str, r: NvrtcResult| GpuError::Compile {
            arch: target.to_string(),
            log: format!("{what} returned NVRTC error {r}"),
        };
        // SAFETY: `src`, `name` and `opts` are NUL-terminated and outlive the calls; the
        // program is destroyed before returning on every path; buffers are sized by the
        // matching *Size call.
        unsafe {
            let r = (self.create)(
                &mut prog,
                src.as_ptr(),
                name.as_ptr(),
                0,
                std::ptr::null(),
                std::ptr::null(),
            );
            if r != 0 {
                return Err(fail("nvrtcCreateProgram", r));
            }
            let rc = (self.compile)(prog, ptrs.len() as c_int, ptrs.as_ptr());
            let mut n = 0usize;
            let mut log = String::new();
            if (self.log_size)(prog, &mut n) == 0 && n > 1 {
                let mut buf = vec![0u8; n];
                if (self.log)(prog, buf.as_mut_ptr().cast()) == 0 {
                    log = CStr::from_bytes_until_nul(&buf)
                        .map(|s| s.to_string_lossy().trim().to_string())
                        .unwrap_or_default();
                }
            }
            let result = if rc != 0 {
                Err(GpuError::Compile {
                    arch: target.to_string(),
                    log: if log.is_empty() {
                        format!("NVRTC error {rc}")
                    } else {
                        log.clone()
                    },
                })
            } else {
                let cubin = target.starts_with("sm_");
                let (size_fn, get_fn) = if cubin {
                    (self.cubin_size, self.cubin)
                } else {
                    (self.ptx_size, self.ptx)
                };
                let mut n = 0usize;
                let r = size_fn(prog, &mut n);
                if r != 0 {
                    Err(fail("nvrtcGet*Size", r))
                } else {
                    let mut image = vec![0u8; n];
                    let r = get_fn(prog, image.as_mut_ptr().cast());
                    if r != 0 {
                        Err(fail("nvrtcGet*", r))
                    } else {
                        Ok(Compiled {
                            target: target.to_string(),
                            image,
                            log,
                        })
                    }
                }
            };
            (self.destroy)(&mut prog);
            result
        }
    }

    /// The image for a device of compute capability `arch`: a cubin when this NVRTC
    /// knows the architecture, else PTX for the newest one it knows below it (the driver
    /// JIT-compiles that). Cached on disk.
    pub fn image_for(&self, arch: (i32, i32)) -> Result<Compiled, GpuError> {
        let want = arch.0 * 10 + arch.1;
        let known = self.supported_archs();
        let target = if known.contains(&want) {
            format!("sm_{want}")
        } else {
            let best =
                known.iter().copied().filter(|&a| a <= want).max().ok_or_else(|| {
                    GpuError::Unsupported(format!("NVRTC {:?} cannot target sm_{want}", self.version))
                })?;
            format!("compute_{best}")
        };
        let key = self.cache_key(&target);
        let path = cache_dir().map(|d| d.join(format!("rans_decode-{target}-{key:016x}.bin")));
        if let Some(image) = path
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .filter(|i| !i.is_empty())
        {
            tracing::debug!("GPU kernel image from cache for {target}");
            return Ok(Compiled {
                target,
                image,
                log: String::new(),
            });
        }
        let c = self.compile(&target, &[])?;
        if !c.log.is_empty() {
            tracing::warn!("NVRTC log for {target}: {}", c.log);
        }
        if let Some(p) = path {
            store(&p, &c.image);
        }
        Ok(c)
    }

    /// Kernel source, defines, target and compiler version: what the image depends on.
    pub fn cache_key(&self, target: &str) -> u64 {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(KERNEL_SOURCE.as_bytes());
        for d in kernel_defines() {
            h.update(d.as_bytes());
        }
        h.update(target.as_bytes());
        h.update(&self.version.0.to_le_bytes());
        h.update(&self.version.1.to_le_bytes());
        h.digest()
    }
}

/// `$XDG_CACHE_HOME/dcfs` or `~/.cache/dcfs`.
pub fn cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("dcfs"))
}

/// Writes via a temporary name so a concurrent reader never sees half an image. A cache
/// that cannot be written only costs a recompile next time.
fn store(path: &Path, image: &[u8]) {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let ok = path.parent().is_some_and(|d| std::fs::create_dir_all(d).is_ok())
        && std::fs::write(&tmp, image).is_ok()
        && std::fs::rename(&tmp, path).is_ok();
    if !ok {
        let _ = std::fs::remove_file(&tmp);
        tracing::debug!("could not cache the GPU kernel at {}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// NVRTC from `$DCFS_NVRTC`, the loader path or the project venv (scripts/nvrtc-check.sh
    /// installs it there).
    fn nvrtc() -> Option<Nvrtc> {
        let venv = std::env::var("DCFS_VENV").unwrap_or_else(|_| format!("{}/.venv", env!("CARGO_MANIFEST_DIR")));
        let mut errs = Vec::new();
        for c in candidates().into_iter().chain(venv_nvrtc(Path::new(&venv))) {
            match Nvrtc::load_from(&c) {
                Ok(n) => return Some(n),
                Err(e) => errs.push(e.to_string()),
            }
        }
        println!("SKIP NVRTC compile test: no libnvrtc loadable ({})", errs.join("; "));
        None
    }

    /// CUDA 11 and 12 sonames are both looked up, and a toolkit directory offers only the
    /// files it really has, in soname order.
    #[test]
    fn lookup_covers_cuda_11_and_12_sonames() {
        let c = candidates();
        for so in ["libnvrtc.so.12", "libnvrtc.so.11.2"] {
            assert!(c.iter().any(|p| p == so), "{so} missing from {c:?}");
        }
        let d = tempfile::tempdir().unwrap();
        assert!(in_dirs([d.path().to_path_buf()].into_iter()).is_empty());
        for so in ["libnvrtc.so.11.2", "libnvrtc.so.12"] {
            std::fs::write(d.path().join(so), b"").unwrap();
        }
        let found = in_dirs([d.path().to_path_buf()].into_iter());
        let want: Vec<String> = ["libnvrtc.so.12", "libnvrtc.so.11.2"]
            .iter()
            .map(|so| d.path().join(so).to_string_lossy().into_owned())
            .collect();
        assert_eq!(found, want);
    }

    #[test]
    fn kernel_compiles_clean_for_every_ci_arch() {
        let Some(n) = nvrtc() else { return };
        println!("NVRTC {:?} from {}", n.version(), n.path);
        for arch in [70, 80, 89, 90] {
            for target in [format!("compute_{arch}"), format!("sm_{arch}")] {
                let c = n.compile(&target, &[]).unwrap_or_else(|e| panic!("{e}"));
                // Targets before 75 carry CUDA 12's deprecation notice and nothing else.
                let log: Vec<&str> = c
                    .log
                    .lines()
                    .filter(|l| !(arch < 75 && l.contains("Architectures prior to '<compute/sm>_75' are deprecated")))
                    .collect();
                assert!(log.is_empty(), "{target}: {}", c.log);
                assert!(c.image.len() > 1000, "{target}: {} bytes", c.image.len());
                println!("{target}: {} bytes", c.image.len());
            }
        }
        assert!(n.supported_archs().contains(&90));
    }

    #[test]
    fn missing_defines_trip_the_guards() {
        let Some(n) = nvrtc() else { return };
        // An extra, conflicting define makes the layout check fire.
        let e = n
            .compile("compute_80", &["-UDCFS_LANES", "-DDCFS_LANES=64"])
            .unwrap_err();
        assert!(e.to_string().contains("one rANS state to one lane"), "{e}");
    }
}
