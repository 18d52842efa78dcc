#!/usr/bin/env python3
"""Compile every cuda/*.cu with NVRTC (loaded through ctypes; no GPU needed) for each
target architecture, and fail on any compile error or warning.

usage: nvrtc_check.py LIBNVRTC DEFINES_FILE ARCH... -- FILE.cu...
DEFINES_FILE holds one NVRTC option per line (`dcfs gpu-defines` prints them).
"""
import ctypes
import sys

# CUDA 12 deprecates targets before compute_75 and says so in the log of every compile
# for them. NVRTC (12.9 tested) has no option to silence it: -w does not, and nvcc's
# -Wno-deprecated-gpu-targets is "unrecognized" there. So that one exact line is removed
# from the log of those targets, and only of those; any other warning fails the check.
DEPRECATED_BELOW = 75
DEPRECATION = "nvrtc: warning: Architectures prior to '<compute/sm>_75' are deprecated"


def check(rc, nvrtc, what):
    if rc != 0:
        nvrtc.nvrtcGetErrorString.restype = ctypes.c_char_p
        raise RuntimeError(f"{what}: {nvrtc.nvrtcGetErrorString(rc).decode()}")


def compile_one(nvrtc, src, name, arch, defines):
    prog = ctypes.c_void_p()
    check(nvrtc.nvrtcCreateProgram(ctypes.byref(prog), src, name.encode(), 0, None, None), nvrtc, "create")
    opts = [f"--gpu-architecture={arch}".encode()] + [d.encode() for d in defines]
    arr = (ctypes.c_char_p * len(opts))(*opts)
    rc = nvrtc.nvrtcCompileProgram(prog, len(opts), arr)
    size = ctypes.c_size_t()
    check(nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(size)), nvrtc, "log size")
    log = ctypes.create_string_buffer(size.value)
    check(nvrtc.nvrtcGetProgramLog(prog, log), nvrtc, "log")
    ptx_size = ctypes.c_size_t()
    if rc == 0:
        # compute_XY gives PTX; sm_XY runs ptxas too and gives a cubin.
        get = nvrtc.nvrtcGetCUBINSize if arch.startswith("sm_") else nvrtc.nvrtcGetPTXSize
        check(get(prog, ctypes.byref(ptx_size)), nvrtc, "image size")
    nvrtc.nvrtcDestroyProgram(ctypes.byref(prog))
    lines = log.value.decode(errors="replace").strip().splitlines()
    if int(arch.split("_")[1]) < DEPRECATED_BELOW:
        known = [l for l in lines if l.startswith(DEPRECATION)]
        if known:
            print(f"     {arch}: known CUDA 12 deprecation warning ignored: {known[0]}")
        lines = [l for l in lines if not l.startswith(DEPRECATION)]
    return rc, "\n".join(lines).strip(), ptx_size.value


def main(argv):
    sep = argv.index("--")
    lib, defines_file, archs, files = argv[1], argv[2], argv[3:sep], argv[sep + 1 :]
    nvrtc = ctypes.CDLL(lib)
    major, minor = ctypes.c_int(), ctypes.c_int()
    nvrtc.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
    print(f"NVRTC {major.value}.{minor.value} from {lib}")
    defines = [l.strip() for l in open(defines_file) if l.strip()]
    failed = 0
    for f in files:
        src = open(f, "rb").read()
        for arch in archs:
            rc, log, ptx = compile_one(nvrtc, src, f, arch, defines)
            bad = rc != 0 or log != ""
            kind = "cubin" if arch.startswith("sm_") else "PTX"
            what = "error" if rc else f"{ptx} bytes of {kind}"
            print(f"{'FAIL' if bad else 'ok  '} {f} {arch}: {what}")
            if log:
                print("  " + log.replace("\n", "\n  "))
            failed += bad
    # With a bad define set the kernel's #error guards must fire: proves they are live.
    rc, log, _ = compile_one(nvrtc, open(files[0], "rb").read(), files[0], archs[-1], [])
    guard_ok = rc != 0 and "must be defined" in log
    print(f"{'ok  ' if guard_ok else 'FAIL'} {files[0]} without defines is rejected by its #error guards")
    failed += not guard_ok
    if failed:
        print(f"{failed} NVRTC check(s) failed")
        return 1
    print(f"all {len(files) * len(archs)} NVRTC compiles clean")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
