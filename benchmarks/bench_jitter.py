"""Frame-to-frame jitter of the alignment against real mouth motion, on voxceleb_mini at 25 fps / 160 px.

    .venv/bin/python benchmarks/bench_jitter.py [--data ../shared/data/voxceleb_mini] [--clips N] [--jobs 2]
                                                [--json out.json]

Every clip goes through sslfer-prep's own phase 1 (preprocess.video_pipeline.process_video, --profile video
settings: 25 fps, 160 px, no patches) once per alignment-smoothing variant: none (--smooth 1), the causal
average of the contrastive default (--smooth 0.6), and zero-phase smoothing with --smooth-sigma 0.5, 1, 2.
Measured between neighbouring stored frames (adjacent source samples), and at lag 4 (the stride of the
16-frame MAE clips at 25 fps), in pixels of the 160 px crop:

- stable: mean displacement of the stored landmarks (crop coordinates) of the nose bridge (27-30) and the
  eye corners (36, 39, 42, 45). Caveat: without smoothing, the alignment is fitted to these same (noisy)
  landmarks, so it pins them near the template even when the image content jitters; this figure is then
  too small. Hence the next one.
- image: the content shift of the upper face (rows 0.25-0.60 S, columns 0.15-0.85 S: eyes and nose
  bridge) between the stored images, by phase correlation (cv2.phaseCorrelate, Hanning window), which
  does not use the landmarks.
- lips: mean displacement of the inner-lip landmarks 60-67 (crop coordinates; includes the jitter).
- opening: mean change of the mouth opening |62-66| (distances do not depend on a shift of the crop).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

STABLE = [27, 28, 29, 30, 36, 39, 42, 45]
INNER_LIP = list(range(60, 68))
LAGS = (1, 4)
VARIANTS = (("none (--smooth 1)", 1.0, 0.0), ("causal EMA (--smooth 0.6)", 0.6, 0.0),
            ("zero-phase sigma 0.5", 0.6, 0.5), ("zero-phase sigma 1", 0.6, 1.0), ("zero-phase sigma 2", 0.6, 2.0))


def base_config():
    from preprocess.cli import _resolve_config

    params = {"dlib_models": None, "descriptor": "none", "device": "cpu", "fps": 25.0, "size": 160, "min_frames": 5,
              "min_face_px": 80, "redetect_every": 10, "smooth": 0.6, "smooth_sigma": 0.0, "cnn_fallback": False,
              "swaps": 0, "seed": 0, "pool_per_identity": 8, "swap_attempts": 3, "codec": "raw", "profile": "video"}
    return _resolve_config("voxceleb", params)


def image_shift(a: np.ndarray, b: np.ndarray, window: np.ndarray) -> float:
    s = a.shape[0]
    rows, cols = slice(int(0.25 * s), int(0.60 * s)), slice(int(0.15 * s), int(0.85 * s))
    ga = cv2.cvtColor(a[rows, cols], cv2.COLOR_RGB2GRAY).astype(np.float64)
    gb = cv2.cvtColor(b[rows, cols], cv2.COLOR_RGB2GRAY).astype(np.float64)
    (dx, dy), _ = cv2.phaseCorrelate(ga, gb, window)
    return float(np.hypot(dx, dy))


def clip_metrics(arrays: dict, sample_step: int) -> dict:
    """Sums and counts of each measure over pairs of stored frames `lag` samples apart."""
    lm = arrays["landmarks"].astype(np.float64)
    faces = arrays["faces"]
    index = arrays["frame_index"].astype(np.int64)
    s = faces.shape[1]
    window = cv2.createHanningWindow((int(0.85 * s) - int(0.15 * s), int(0.60 * s) - int(0.25 * s)), cv2.CV_64F)
    out = {}
    for lag in LAGS:
        if len(index) <= lag:
            continue
        ok = np.flatnonzero(index[lag:] - index[:-lag] <= lag * sample_step + 1)  # no dropped frame between
        a, b = ok, ok + lag
        stable = np.linalg.norm(lm[b][:, STABLE] - lm[a][:, STABLE], axis=2).mean(axis=1)
        lips = np.linalg.norm(lm[b][:, INNER_LIP] - lm[a][:, INNER_LIP], axis=2).mean(axis=1)
        opening = np.linalg.norm(lm[:, 62] - lm[:, 66], axis=1)
        shifts = np.array([image_shift(faces[i], faces[j], window) for i, j in zip(a, b)])
        out[lag] = {"pairs": int(len(a)), "stable": float(stable.sum()), "lips": float(lips.sum()),
                    "opening": float(np.abs(opening[b] - opening[a]).sum()), "image": float(shifts.sum())}
    return out


def run_clip(task):
    source, config = task
    from preprocess.phase_tasks import model_spec
    from preprocess.video_pipeline import process_video
    from preprocess.worker_models import face_models

    result = process_video(source, config, face_models(model_spec(config)))
    if result.arrays is None:
        return None
    step = max(1, int(round(float(result.arrays["source_fps"]) / config.fps)))
    return len(result.arrays["faces"]), clip_metrics(result.arrays, step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "voxceleb_mini")
    parser.add_argument("--clips", type=int, default=None, help="first N clips only (default: all)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from multiprocessing import get_context

    from preprocess.sources import discover_voxceleb

    sources = discover_voxceleb(args.data)[: args.clips]
    config = base_config()
    started, load0 = time.time(), os.getloadavg()[0]
    results = {}
    with get_context("spawn").Pool(args.jobs) as pool:
        for label, smooth, sigma in VARIANTS:
            variant = replace(config, smooth=smooth, smooth_sigma=sigma)
            clips = [r for r in pool.map(run_clip, [(s, variant) for s in sources]) if r is not None]
            totals = {}
            for _, metrics in clips:
                for lag, m in metrics.items():
                    acc = totals.setdefault(lag, dict.fromkeys(m, 0.0))
                    for key, value in m.items():
                        acc[key] += value
            results[label] = {
                "clips": len(clips), "frames": int(sum(n for n, _ in clips)),
                **{f"lag{lag}": {k: (v / t["pairs"] if k != "pairs" else int(v)) for k, v in t.items()}
                   for lag, t in totals.items()},
            }
            print(f"{label}: done ({time.time() - started:.0f} s)", file=sys.stderr)
    machine = (f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
               f"OpenCV {cv2.__version__}; load average {load0:.2f} -> {os.getloadavg()[0]:.2f}; "
               f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {time.time() - started:.0f} s")
    print(f"{len(sources)} clips of {args.data.name} at 25 fps, 160 px crops; {machine}")
    print("px in the 160 px crop, mean over pairs of stored frames; ratio = lips / stable, opening / image")
    header = "| alignment smoothing | lag | pairs | stable landmarks | image shift (eyes/nose) | inner lips | mouth opening | lips / stable | opening / image |"
    print(header)
    print("|---|---|---|---|---|---|---|---|---|")
    for label, r in results.items():
        for lag in LAGS:
            m = r.get(f"lag{lag}")
            if m:
                print(f"| {label} | {lag} | {m['pairs']} | {m['stable']:.3f} | {m['image']:.3f} | {m['lips']:.3f} | "
                      f"{m['opening']:.3f} | {m['lips'] / m['stable']:.2f} | {m['opening'] / m['image']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "clips": len(sources), "results": results}, indent=2))


if __name__ == "__main__":
    main()
