"""The fast paths whose wall-clock limits used to sit inside the tests, measured here as ratios in one run.

Tests on a loaded machine cannot hold a time limit, so they check what makes these paths fast by counts
(a bootstrap drawn in blocks, a refusal read from the header, a model read from its small bundled folder)
and this script measures the time, each figure as a ratio of two timings taken in the same run:

- ``report``: :func:`calibprompt.evaluation.metrics.calibration_report` with ``--boot`` resamples on
  ``--rows`` x 9 probabilities, against the same report without intervals (``ratio_to_point``) and against
  one metric's per-resample loop (:func:`~calibprompt.evaluation.metrics.bootstrap_interval` of the ECE,
  ``per_resample_ratio``, > 1 when the vectorised report of six intervals is faster than one interval
  resample by resample). Was: under 5 s for 1000 resamples of 5000 rows.
- ``refusal``: :func:`calibprompt.data.load_image` refusing a ``--megabytes`` MB text file, against a 1 kB
  one (``large_to_small``: about 1 when the refusal reads the header only); refusing a PNG header that
  declares 100000 x 100000 pixels, against decoding a 64 x 64 PNG (``bomb_to_decode``). Was: under 1 s each.
- ``demo_load``: ``load_backbone("demo")``, against reading its bundled files' bytes (``to_read``). Was:
  under 2 s.

    python benchmarks/fast_paths.py [--rows 5000] [--boot 1000] [--megabytes 19] [--repeats 3] [--json out.json]

Every time is the median of ``--repeats`` runs after one warm-up.
"""
from __future__ import annotations

import argparse
import io
import statistics
import struct
import sys
import time
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from calibprompt.fileio import atomic_write_json  # noqa: E402


def median_seconds(fn, repeats: int) -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeats`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _refused(fn) -> None:
    try:
        fn()
    except ValueError:
        return
    raise AssertionError("expected a refusal")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG signature and IHDR chunk declaring ``width`` x ``height`` 8-bit RGB pixels, and no pixel data."""
    body = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + body + struct.pack(">I", zlib.crc32(body))


def report_figures(rows: int, boot: int, repeats: int) -> dict:
    """Seconds of the report with and without ``boot`` resamples, and of one per-resample ECE interval."""
    from calibprompt.evaluation import metrics as M

    rng = np.random.default_rng(9)
    logits = rng.normal(size=(rows, 9)) * 2.0
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = rng.integers(0, 9, size=rows)
    full = median_seconds(lambda: M.calibration_report(probs, labels, n_bins=10, n_boot=boot, seed=0), repeats)
    point = median_seconds(lambda: M.calibration_report(probs, labels, n_bins=10, n_boot=0), repeats)
    loop = median_seconds(lambda: M.bootstrap_interval(M.expected_calibration_error, probs, labels, n_boot=boot,
                                                        seed=0, n_bins=10), 1)
    return {"rows": rows, "boot": boot, "seconds": full, "point_seconds": point, "per_resample_seconds": loop,
            "ratio_to_point": full / point, "per_resample_ratio": loop / full}


def refusal_figures(megabytes: float, repeats: int) -> dict:
    """Seconds to refuse a large and a small non-image, a declared pixel bomb, and to decode a small PNG."""
    from PIL import Image

    from calibprompt.data import load_image

    line = b"hello world, this is a long text file\n"
    large = line * max(1, int(megabytes * 1e6 / len(line)))
    small = line * 27
    small_png = io.BytesIO()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(small_png, format="PNG")
    bomb = png_header_only(100_000, 100_000)
    large_s = median_seconds(lambda: _refused(lambda: load_image(large)), repeats)
    small_s = median_seconds(lambda: _refused(lambda: load_image(small)), repeats)
    bomb_s = median_seconds(lambda: _refused(lambda: load_image(bomb)), repeats)
    decode_s = median_seconds(lambda: load_image(small_png.getvalue()), repeats)
    return {"megabytes": len(large) / 1e6, "large_seconds": large_s, "small_seconds": small_s,
            "bomb_seconds": bomb_s, "decode_seconds": decode_s, "large_to_small": large_s / small_s,
            "bomb_to_decode": bomb_s / decode_s}


def demo_load_figures(repeats: int) -> dict:
    """Seconds to load the demo backbone, and to read its bundled files' bytes."""
    import open_clip  # noqa: F401  (imports are not part of the load time)

    from calibprompt.backbones import load_backbone

    folder = ROOT / "calibprompt" / "assets" / "demo-backbone"
    files = [f for f in folder.iterdir() if f.is_file()]
    load = median_seconds(lambda: load_backbone("demo", device="cpu"), repeats)
    read = median_seconds(lambda: [f.read_bytes() for f in files], repeats)
    return {"seconds": load, "read_seconds": read, "bytes": sum(f.stat().st_size for f in files),
            "to_read": load / read}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5000, help="rows of the report's probabilities")
    parser.add_argument("--boot", type=int, default=1000, help="bootstrap resamples of the report")
    parser.add_argument("--megabytes", type=float, default=19.0, help="size of the large non-image")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the figures to this JSON file")
    args = parser.parse_args(argv)
    for name, value in (("--rows", args.rows), ("--boot", args.boot), ("--repeats", args.repeats)):
        if value < 1:
            raise SystemExit(f"{name} must be a whole number >= 1, got {value}; pass e.g. {name} 3.")
    result = {"report": report_figures(args.rows, args.boot, args.repeats),
              "refusal": refusal_figures(args.megabytes, args.repeats),
              "demo_load": demo_load_figures(args.repeats), "repeats": args.repeats}
    report, refusal, demo = result["report"], result["refusal"], result["demo_load"]
    print(f"report of {args.rows} rows with {args.boot} resamples {report['seconds']:.2f} s: "
          f"{report['ratio_to_point']:.1f}x the report without intervals; one ECE interval resample by "
          f"resample takes {report['per_resample_ratio']:.1f}x as long")
    print(f"refusing {refusal['megabytes']:.0f} MB of text {refusal['large_seconds'] * 1e3:.1f} ms: "
          f"{refusal['large_to_small']:.1f}x refusing 1 kB; refusing a declared 10^10-pixel PNG "
          f"{refusal['bomb_to_decode']:.2f}x decoding a 64 x 64 PNG")
    print(f"demo backbone load {demo['seconds']:.2f} s: {demo['to_read']:.0f}x reading its "
          f"{demo['bytes'] / 1e6:.1f} MB of files")
    if args.json:
        atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
