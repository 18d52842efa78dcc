/* C ABI of dcfs (libdcfs_capi.so, built by `cargo build --release -p dcfs-capi`).
 *
 * Decodes one tensor of a packed file (`X.safetensors.dcz` or `X.gguf.dcz`, written by
 * `dcfs pack`) into memory the caller owns (host) or into a new device buffer (CUDA),
 * without a FUSE mount. Every chunk is checked against its xxh3 checksum; a damaged pack
 * is an error, never wrong bytes.
 *
 * Every function returning int gives 0 on success and -1 on failure; dcfs_last_error()
 * then returns the reason (thread-local, valid until the next call on this thread).
 * Strings are NUL-terminated UTF-8 paths and tensor names. Thread-safe.
 */
#ifndef DCFS_H
#define DCFS_H
#include <stdint.h>
#include <stddef.h>

#define DCFS_MAX_DIMS 8

typedef struct {
    char dtype[16];                 /* "BF16", "F32", "I8", "F8_E4M3", GGUF: "Q4_1", ... */
    uint32_t ndim;                  /* dimensions used in shape (<= DCFS_MAX_DIMS) */
    uint64_t shape[DCFS_MAX_DIMS];  /* as the file states it (GGUF: ggml order) */
    uint64_t nbytes;                /* bytes of the tensor's data */
} dcfs_tensor_info;

typedef struct dcfs_device_tensor dcfs_device_tensor; /* opaque */

const char *dcfs_last_error(void);

/* Writes the tensor names of PATH, one per line, into BUF (at most CAP bytes including the
 * NUL). Returns the length the full list needs (without the NUL), or -1. */
int64_t dcfs_tensor_names(const char *path, char *buf, size_t cap);

int dcfs_tensor_info_get(const char *path, const char *name, dcfs_tensor_info *out);

/* Decodes tensor NAME of PATH into DST, which must hold exactly info.nbytes bytes. */
int dcfs_decode_tensor_host(const char *path, const char *name, void *dst, uint64_t dst_len);

/* Decodes tensor NAME into a new buffer on CUDA device 0 (primary context, the one the CUDA
 * runtime and PyTorch use). VERIFY != 0 also checks the xxh3 of GPU-decoded chunks (one
 * extra device-to-host copy) and decodes a failing chunk again on the CPU. Pass 1: with 0
 * only the kernel's structural flags guard the output, and they miss some damage (about one
 * bit flip in six in the project's emulator test), so wrong bytes can reach DST. The Python
 * package always passes 1. Free with dcfs_device_tensor_free. */
int dcfs_decode_tensor_cuda(const char *path, const char *name, int verify, dcfs_device_tensor **out);
uint64_t dcfs_device_tensor_ptr(const dcfs_device_tensor *t);
uint64_t dcfs_device_tensor_len(const dcfs_device_tensor *t);
void dcfs_device_tensor_free(dcfs_device_tensor *t);

#endif
