#!/usr/bin/env bash
# The package as users install it: build the sdist and wheel (python -m build), install the wheel into a fresh
# venv outside the source tree, and run every console script's --help plus one small evaluation.
# The fresh venv gets the wheel only (--no-deps); its dependencies come from the project venv's site-packages
# through a .pth file, so nothing is downloaded and the step takes seconds, while every sslfer module is
# imported from the wheel (checked below), not from this checkout.
set -euo pipefail
unset PYTHONPATH  # a checkout on the path would hide what the wheel lacks
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PY=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")
started=$(date +%s)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$PY" -m build --no-isolation --outdir "$work/dist" . >"$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
wheel=$(ls "$work"/dist/sslfer-*.whl)
ls "$work"/dist/sslfer-*.tar.gz >/dev/null

"$PY" -m venv "$work/venv"
venv_py="$work/venv/bin/python"
deps=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
here=$("$venv_py" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
echo "$deps" > "$here/zz_project_dependencies.pth"  # after the wheel's own files on sys.path
"$venv_py" -m pip install -q --no-deps --no-index "$wheel"

cd "$work"  # outside the source tree: nothing can be imported from the checkout
for module in sslfer_core preprocess train data_manifest; do
    where=$("$venv_py" -c "import $module; print($module.__file__)")
    case "$where" in "$here"/*) ;; *) echo "wheel check: $module imported from $where, not the wheel"; exit 1;; esac
done
for script in sslfer-prep sslfer-train sslfer-eval sslfer-manifest; do
    "$work/venv/bin/$script" --help >/dev/null
done
for command in contrastive export; do "$work/venv/bin/sslfer-train" "$command" --help >/dev/null; done
for command in linear finetune identity saliency compare dfer; do "$work/venv/bin/sslfer-eval" "$command" --help >/dev/null; done

# One small command: a linear probe of the random backbone on 3 x 8 synthetic 32 px images.
"$venv_py" - <<'PYTHON'
import cv2, numpy as np
rng = np.random.default_rng(0)
for split, count in (("train", 4), ("val", 2), ("test", 2)):
    for kind in ("rows", "columns", "flat"):
        for n in range(count):
            y, x = np.mgrid[0:32, 0:32]
            image = {"rows": (y // 4) % 2, "columns": (x // 4) % 2, "flat": 0 * x}[kind] * 150 + 50
            image = np.clip(image + rng.normal(0, 10, (32, 32)), 0, 255).astype(np.uint8)
            path = f"data/{split}/{kind}/{n}.png"
            __import__("os").makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            cv2.imwrite(path, image)
PYTHON
"$work/venv/bin/sslfer-eval" linear --backbone random --data data --out results --image-size 32 --no-cache \
    --workers 0 --threads 1 --max-iterations 20 --weight-decays 0 >/dev/null
test -s results/results.json
echo "wheel check: built, installed outside the source tree, 4 console scripts and a linear probe ran ($(( $(date +%s) - started )) s)"
