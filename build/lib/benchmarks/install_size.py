"""Install size of the torch-free runtime against the full toolchain environment.

    python -m benchmarks.install_size --out runs/install [--full .venv]

Builds a fresh virtual environment in OUT/runtime_env with `pip install .` (the runtime: numpy,
nibabel, onnxruntime, OpenVINO where its wheel exists, tqdm; pyproject.toml) and measures it and
the full environment (default: the one running this script, `make venv`'s .venv) on disk: the
bytes of every file under each prefix. Lists the runtime's packages, and checks that torch is
not among them. Writes OUT/install_size.json.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def tree_bytes(root: Path) -> int:
    """Bytes of the regular files under `root` (symlinks not followed, each file counted once)."""
    seen, total = set(), 0
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            st = p.stat()
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--full", type=Path, default=Path(sys.prefix), help="the full environment (default: this one)")
    a = ap.parse_args(argv)
    from model.artifacts import atomic_write_json, git_commit
    from model.cli import run_cli

    def body():
        env = a.out / "runtime_env"
        if env.exists():
            raise FileExistsError(f"{env}: exists; remove it to measure a fresh install")
        subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
        py = env / "bin" / "python"
        subprocess.run([str(py), "-m", "pip", "install", "-q", str(ROOT)], check=True)
        pkgs = json.loads(subprocess.run([str(py), "-m", "pip", "list", "--format", "json"], check=True,
                                         capture_output=True, text=True).stdout)
        names = sorted(p["name"].lower() for p in pkgs)
        if "torch" in names or "brevitas" in names:
            raise AssertionError(f"the runtime install pulled the training stack: {names}")
        runtime, full = tree_bytes(env), tree_bytes(a.full)
        report = {"runtime_bytes": runtime, "full_bytes": full, "ratio": round(runtime / full, 3),
                  "runtime_packages": {p["name"]: p["version"] for p in pkgs}, "full_env": str(a.full),
                  "git_commit": git_commit()}
        atomic_write_json(a.out / "install_size.json", report)
        print(f"runtime {runtime / 2**20:.0f} MiB, full {full / 2**20:.0f} MiB ({report['ratio']:.1%})")
    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
