"""Offscreen frame strip of a recorded episode, rendered in a child process.

MuJoCo picks its OpenGL backend from ``MUJOCO_GL`` when it is imported, and a missing or broken GL
library can abort the process, so rendering runs in ``python -m statesim_mujoco.render`` with each backend
in turn (the user's ``MUJOCO_GL`` first, then ``egl``, then ``osmesa``); the run itself never depends on it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np


def frame_strip(qpos: np.ndarray, times: list[float], xml: str, out: Path, *, width: int = 320,
                height: int = 240, timeout: float = 60.0) -> dict[str, Any]:
    """Render the poses ``qpos [F, nq]`` into one PNG strip at ``out``; says which backend worked, or why none did."""
    out = Path(out)
    work = out.with_suffix(".frames.npz")
    np.savez(work, qpos=qpos, times=np.asarray(times), xml=np.asarray(xml), size=np.asarray([width, height]))
    tried = []
    backends = [b for b in dict.fromkeys([os.environ.get("MUJOCO_GL", ""), "egl", "osmesa"]) if b]
    try:
        for backend in backends:
            env = {**os.environ, "MUJOCO_GL": backend, "PYOPENGL_PLATFORM": backend}
            try:
                proc = subprocess.run([sys.executable, "-m", "statesim_mujoco.render", str(work), str(out)],
                                      env=env, capture_output=True, text=True, timeout=timeout)
            except subprocess.TimeoutExpired:
                tried.append(f"{backend}: timed out after {timeout:.0f} s")
                continue
            if proc.returncode == 0 and out.is_file():
                return {"available": True, "backend": backend, "file": out.name, "frames": len(qpos),
                        "times_s": [round(t, 3) for t in times]}
            reason = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
            tried.append(f"{backend}: {reason[:200]}")
    finally:
        work.unlink(missing_ok=True)
    return {"available": False, "reason": "no offscreen OpenGL backend worked (" + "; ".join(tried) + "). Set "
            "MUJOCO_GL=egl with an EGL driver, or install OSMesa (Debian: apt-get install libosmesa6) and "
            "set MUJOCO_GL=osmesa."}


def _render(work: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mujoco

    data = np.load(work)
    width, height = (int(v) for v in data["size"])
    model = mujoco.MjModel.from_xml_string(str(data["xml"]))
    frame = mujoco.MjData(model)
    renderer = mujoco.Renderer(model, height, width)
    images = []
    for q in data["qpos"]:
        frame.qpos[:] = q
        mujoco.mj_forward(model, frame)
        renderer.update_scene(frame, camera="track")
        images.append(renderer.render().copy())
    renderer.close()
    fig, axes = plt.subplots(1, len(images), figsize=(2.2 * len(images), 2.2 * height / width + 0.3))
    for ax, image, t in zip(np.atleast_1d(axes), images, data["times"]):
        ax.imshow(image)
        ax.set_title(f"t = {t:.2f} s", fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=100)


if __name__ == "__main__":
    try:
        _render(Path(sys.argv[1]), Path(sys.argv[2]))
    except Exception as exc:  # reported to the parent as this backend's reason
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), file=sys.stderr)
        sys.exit(1)
