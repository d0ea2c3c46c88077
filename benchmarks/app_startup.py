"""How fast the app starts: ``import calibprompt``, the page, and the first ``/compare`` answer.

Starts ``python app.py`` in a subprocess on a free port, with a fresh, empty data directory
(``CALIBPROMPT_HOME``) and Hugging Face cache (``HF_HOME``) per run, polls until the page answers,
then calls the public ``/compare`` endpoint through ``gradio_client`` with a bundled sample image,
twice. Every time is counted from the moment the process is started; the import time is measured
in a separate interpreter (the ``import`` statement alone, without the interpreter's own start).

    python benchmarks/app_startup.py [--runs 3] [--model auto] [--json startup.json]

Prints, per run and as medians over the runs, the seconds to ``import calibprompt``, until the page
is served, until the first ``/compare`` answer, and the second answer's latency, and writes
``{"import_seconds", "page_seconds", "first_answer_seconds", "second_answer_seconds", "device", ...}``.
On Linux it also reports the CPU seconds the app's process had used by the page and by the first
answer (``page_cpu_seconds``, ``first_answer_cpu_seconds``): on a machine that others share, those move
much less with their load than the wall-clock figures.
Target: the first answer within 5 s on a 2-core CPU machine, with the demo model (``--model auto``
with BiomedCLIP not in the empty cache and the Hub unreachable, see ``--hub-endpoint``, ends on the
demo model).
"""
from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from calibprompt.fileio import atomic_write_json  # noqa: E402  (cheap: the package imports nothing first)
APP = ROOT / "app.py"
SAMPLE = ROOT / "sample_images" / "demo-norm-0048.png"
KEYS = ("import_seconds", "page_seconds", "first_answer_seconds", "second_answer_seconds")
CPU_KEYS = ("page_cpu_seconds", "first_answer_cpu_seconds")
#: a closed local port as the Hugging Face Hub: ``--model auto`` probes it, fails at once and starts on the demo
CLOSED_HUB = "http://127.0.0.1:9"

IMPORT_CODE = "import time; t = time.perf_counter(); import calibprompt; print(time.perf_counter() - t)"
DEVICE_CODE = ("from calibprompt.devices import resolve_device; import torch; d = resolve_device('auto'); "
               "print(torch.cuda.get_device_name(d) if d.type == 'cuda' else d.type)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def import_seconds() -> float:
    """Seconds that ``import calibprompt`` takes in a fresh interpreter."""
    out = subprocess.run([sys.executable, "-c", IMPORT_CODE], capture_output=True, text=True, check=True, cwd=ROOT)
    return float(out.stdout.strip().splitlines()[-1])


def app_device() -> str:
    """The device the app's models run on (``auto``): ``cpu``, ``mps`` or the CUDA device's name."""
    out = subprocess.run([sys.executable, "-c", DEVICE_CODE], capture_output=True, text=True, check=True, cwd=ROOT)
    return out.stdout.strip().splitlines()[-1]


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` (all its threads) so far; None where ``/proc`` is missing."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14, 15)


def _page_answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.is_file() else ""


def start_once(model: str, timeout: float, image: Path, hub_endpoint: str = CLOSED_HUB) -> dict[str, float | None]:
    """One cold start of ``python app.py``: seconds until the page answers and until the first and the
    second ``/compare`` answers (the second as its own latency), and the app's CPU seconds by the page
    and by the first answer. ``hub_endpoint`` becomes ``HF_ENDPOINT`` (empty: the environment's)."""
    from gradio_client import Client, handle_file  # imported before the clock starts

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with tempfile.TemporaryDirectory(prefix="calibprompt-startup-") as tmp:
        tmp = Path(tmp)
        env = dict(os.environ, CALIBPROMPT_HOME=str(tmp / "home"), HF_HOME=str(tmp / "hf"),
                   GRADIO_ANALYTICS_ENABLED="False", HF_HUB_DISABLE_TELEMETRY="1", PYTHONUNBUFFERED="1")
        if hub_endpoint:
            env["HF_ENDPOINT"] = hub_endpoint
        log = tmp / "app.log"
        with open(log, "wb") as sink:
            start = time.perf_counter()
            process = subprocess.Popen([sys.executable, str(APP), "--model", model, "--host", "127.0.0.1",
                                        "--port", str(port)], cwd=ROOT, env=env, stdout=sink,
                                       stderr=subprocess.STDOUT)
            try:
                while not _page_answers(url):
                    if process.poll() is not None:
                        raise RuntimeError(f"app.py exited with status {process.returncode} before serving the page.")
                    if time.perf_counter() - start > timeout:
                        raise RuntimeError(f"app.py did not serve the page within {timeout:.0f} s.")
                    time.sleep(0.05)
                page = time.perf_counter() - start
                page_cpu = cpu_seconds(process.pid)
                client = Client(url, verbose=False)
                answer = client.predict(handle_file(str(image)), "", api_name="/compare")
                first = time.perf_counter() - start
                first_cpu = cpu_seconds(process.pid)
                if not isinstance(answer, dict) or not answer:
                    raise RuntimeError(f"/compare answered {answer!r}, not the methods' probabilities.")
                again = time.perf_counter()
                client.predict(handle_file(str(image)), "", api_name="/compare")
                second = time.perf_counter() - again
                client.close()
            except Exception as exc:  # the app's own words say why
                raise RuntimeError(f"{exc}\n--- the end of app.py's log ---\n{_tail(log)}") from exc
            finally:
                process.terminate()
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
    return {"page_seconds": page, "first_answer_seconds": first, "second_answer_seconds": second,
            "page_cpu_seconds": page_cpu, "first_answer_cpu_seconds": first_cpu}


def _cpu_note(figures: dict) -> str:
    if figures.get("first_answer_cpu_seconds") is None:
        return ""
    return (f" (app CPU: {figures['page_cpu_seconds']:.1f} s by the page, {figures['first_answer_cpu_seconds']:.1f} s "
            "by the first answer)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1, help="cold starts to time (medians are reported)")
    parser.add_argument("--model", default="auto", help="the app's --model (default auto)")
    parser.add_argument("--image", type=Path, default=SAMPLE, help="the image sent to /compare")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds a start may take before it fails")
    parser.add_argument("--hub-endpoint", default=CLOSED_HUB,
                        help="the app's HF_ENDPOINT (default: a closed local port, so 'auto' ends on the demo model "
                             "even on a machine with internet; '' keeps the environment's)")
    parser.add_argument("--json", type=Path, help="write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    runs = []
    for i in range(args.runs):
        figures = {"import_seconds": import_seconds(),
                   **start_once(args.model, args.timeout, args.image, args.hub_endpoint)}
        runs.append(figures)
        print(f"run {i + 1}: import calibprompt {figures['import_seconds']:.2f} s; page {figures['page_seconds']:.2f} s; "
              f"first /compare answer {figures['first_answer_seconds']:.2f} s; second answer "
              f"{figures['second_answer_seconds']:.3f} s{_cpu_note(figures)}")
    result = {key: statistics.median(r[key] for r in runs) for key in KEYS}
    for key in CPU_KEYS:
        values = [r[key] for r in runs if r[key] is not None]
        result[key] = statistics.median(values) if values else None
    result.update({
        "device": app_device(),
        "model": args.model,
        "runs": args.runs,
        "per_run": runs,
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "python": platform.python_version(),
    })
    print(f"median of {args.runs} on {result['device']} ({result['cpus']} CPUs): import calibprompt "
          f"{result['import_seconds']:.2f} s; page served at {result['page_seconds']:.2f} s; first /compare answer at "
          f"{result['first_answer_seconds']:.2f} s (target < 5 s); second answer {result['second_answer_seconds']:.3f} s"
          f"{_cpu_note(result)}")
    if args.json:
        atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
