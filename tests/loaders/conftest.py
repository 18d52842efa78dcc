"""Fixtures for the loader tests: a packed copy of models/, one FUSE mount of it for the
whole session (always unmounted, also on failure), cold/warm timing helpers.

Environment (scripts/loader-tests.sh sets these):
  DCFS_BIN            the dcfs binary (default <repo>/target/release/dcfs)
  DCFS_MODELS         the unpacked models dir (default <repo>/models)
  DCFS_LOADER_PACKED  an existing `dcfs pack` of DCFS_MODELS; packed into a temp dir if unset
  DCFS_LOADER_MNT     mount point to use (default: a temp dir)
  DCFS_LOADER_REMOTE  s3://bucket/prefix where DCFS_LOADER_PACKED was pushed (`dcfs push`);
                      the loaders then also run on `dcfs mount` of that URL, reached through
                      AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and
                      AWS_ALLOW_HTTP=true. Unset: those runs are skipped (a SKIP line says so).
  DCFS_LOADER_REMOTE_MNT  mount point for that remote mount (default: a temp dir)
"""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DCFS = Path(os.environ.get("DCFS_BIN", REPO / "target" / "release" / "dcfs"))
MODELS = Path(os.environ.get("DCFS_MODELS", REPO / "models"))

MINILM_VARIANTS = ["f32", "bf16", "f16", "int8-tensor", "int8-channel", "fp8"]
GGUF_REL = "smollm2-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf"

# (loader, what, cache state, source) -> seconds; printed at the end, never asserted.
TIMINGS = []


def _mounted(path: Path) -> bool:
    p = str(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split(" ")[4] == p for line in f)


class Mount:
    """A daemonised `dcfs mount PACKED MNT`; stop() unmounts and waits for the daemon.

    `packed` is a local pack directory or a remote pack URL (kept as a string: Path would
    fold the `//` of `s3://`)."""

    def __init__(self, packed, mnt: Path):
        self.packed = packed
        self.mnt = mnt

    def start(self):
        self.mnt.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(
            [str(DCFS), "mount", str(self.packed), str(self.mnt)], capture_output=True, text=True
        )
        if r.returncode != 0:
            raise RuntimeError(f"dcfs mount failed ({r.returncode}): {r.stderr.strip()}")
        self.mnt = self.mnt.resolve()

    def stop(self):
        if not _mounted(self.mnt):
            return
        r = subprocess.run([str(DCFS), "umount", str(self.mnt)], capture_output=True, text=True)
        if r.returncode != 0:
            subprocess.run([str(DCFS), "umount", "-l", str(self.mnt)], capture_output=True)
        for _ in range(250):
            if not _mounted(self.mnt):
                return
            time.sleep(0.02)
        raise RuntimeError(f"{self.mnt} still mounted after umount")

    def stats(self):
        r = subprocess.run(
            [str(DCFS), "stats", str(self.mnt), "--json"], capture_output=True, text=True, check=True
        )
        return json.loads(r.stdout)


@pytest.fixture(scope="session")
def models() -> Path:
    missing = [v for v in MINILM_VARIANTS if not (MODELS / f"minilm-{v}" / "model.safetensors").is_file()]
    if missing or not (MODELS / GGUF_REL).is_file():
        pytest.fail(f"models missing under {MODELS} (run scripts/fetch-models.sh): {missing or GGUF_REL}")
    return MODELS.resolve()


@pytest.fixture(scope="session")
def packed(models, tmp_path_factory) -> Path:
    given = os.environ.get("DCFS_LOADER_PACKED")
    if given:
        return Path(given)
    if not DCFS.is_file():
        pytest.fail(f"{DCFS} not found (cargo build --release)")
    out = tmp_path_factory.mktemp("packed") / "models.dcfs"
    subprocess.run([str(DCFS), "pack", str(models), str(out)], check=True)
    return out


@pytest.fixture(scope="session")
def mount(packed, tmp_path_factory, request) -> Mount:
    if os.geteuid() != 0 or not Path("/dev/fuse").exists():
        pytest.skip(f"SKIP: mounting needs root and /dev/fuse (euid={os.geteuid()})")
    mnt = Path(os.environ.get("DCFS_LOADER_MNT") or tmp_path_factory.mktemp("mnt"))
    m = Mount(packed, mnt)
    request.addfinalizer(m.stop)  # registered first: runs even if start() half-succeeds
    m.start()
    return m


@pytest.fixture(scope="session")
def remote_mount(tmp_path_factory, request) -> Mount:
    """`dcfs mount s3://bucket/prefix MNT` of the same pack, pushed by scripts/loader-tests.sh."""
    url = os.environ.get("DCFS_LOADER_REMOTE")
    if not url:
        pytest.skip("SKIP: DCFS_LOADER_REMOTE unset (scripts/loader-tests.sh pushes the pack to a local S3 server)")
    if os.geteuid() != 0 or not Path("/dev/fuse").exists():
        pytest.skip(f"SKIP: mounting needs root and /dev/fuse (euid={os.geteuid()})")
    m = Mount(url, Path(os.environ.get("DCFS_LOADER_REMOTE_MNT") or tmp_path_factory.mktemp("mnt-remote")))
    request.addfinalizer(m.stop)
    m.start()
    return m


# Where the mount-based loader tests read from: the local pack, and the same pack pushed
# to object storage and mounted from there. Same comparisons against the unpacked files.
SOURCES = ["local", "s3"]


@pytest.fixture(scope="session", params=SOURCES)
def mnt(request) -> Path:
    return request.getfixturevalue("mount" if request.param == "local" else "remote_mount").mnt


def pytest_configure(config):
    # SIGTERM (scripts/loader-tests.sh forwards INT/TERM as TERM) stops the run like ^C, so
    # session fixtures are torn down and the mount is unmounted.
    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)


def can_drop_caches() -> bool:
    return os.geteuid() == 0 and os.access("/proc/sys/vm/drop_caches", os.W_OK)


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def measure(loader: str, what: str, mount: Mount, models: Path, rel: str, load, seconds=None):
    """Times `load(path)` from the unpacked dir and from the mount, cold then warm.

    `seconds(obj)`, if given, reads the time from what `load` returned (for loads run in a
    subprocess that time themselves, leaving out interpreter start and imports).

    Cold: page cache dropped (and, for the mount, a fresh dcfs daemon so its chunk cache is
    empty too) right before the load. Warm: the same load repeated at once. Records and
    prints the seconds; asserts nothing about them.
    """
    cold = can_drop_caches()
    if not cold:
        print(f"SKIP cold timings for {loader}: dropping caches needs root")
    for source in ("unpacked", "mount"):
        root = models if source == "unpacked" else mount.mnt
        path = root / rel
        if cold:
            if source == "mount":
                mount.stop()
                drop_caches()
                mount.start()
            else:
                drop_caches()
            t0 = time.perf_counter()
            obj = load(path)
            dt = time.perf_counter() - t0
            TIMINGS.append((loader, what, "cold", source, seconds(obj) if seconds else dt))
            del obj
        load(path)  # make sure it is warm even when cold runs were skipped
        t0 = time.perf_counter()
        obj = load(path)
        dt = time.perf_counter() - t0
        TIMINGS.append((loader, what, "warm", source, seconds(obj) if seconds else dt))
        del obj


def pytest_terminal_summary(terminalreporter):
    if not TIMINGS:
        return
    tr = terminalreporter
    tr.section("loader load times (measured, not asserted)")
    rows = {}
    for loader, what, cache, source, s in TIMINGS:
        rows.setdefault((loader, what), {})[(cache, source)] = s
    cols = [("cold", "unpacked"), ("cold", "mount"), ("warm", "unpacked"), ("warm", "mount")]
    tr.write_line(f"{'loader':<22} {'what':<34} " + " ".join(f"{c + '/' + s:>14}" for c, s in cols))
    for (loader, what), v in rows.items():
        cells = " ".join(f"{v[c]:>13.3f}s" if c in v else f"{'-':>14}" for c in cols)
        tr.write_line(f"{loader:<22} {what:<34} {cells}")
    out = os.environ.get("DCFS_LOADER_TIMINGS")
    if out:
        with open(out, "w") as f:
            json.dump([dict(zip(("loader", "what", "cache", "source", "seconds"), t)) for t in TIMINGS], f, indent=1)
