"""Create (or update) the Docker and Kubernetes work pools from their templates on the current Prefect API.

    python deploy/pools.py [docker] [k8s]      # both by default; `make pools` runs it

Needs the pool types' packages (`pip install -e '.[docker,k8s]'`) for their workers, not for creating
the pools. Each template takes a `gpus` job variable (default 1): set it per deployment under its
`work_pool: {job_variables: {gpus: 8}}` in deploy/prefect.yaml, or per run with
`prefect deployment run ... --job-variable gpus=4`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
POOLS = {"docker": ("uvit-docker", "docker", HERE / "docker-pool.json"),
         "k8s": ("uvit-k8s", "kubernetes", HERE / "k8s-pool.yaml")}  # fmt: skip


def template(kind: str) -> dict:
    """The base job template of a pool kind, as the Prefect API takes it (JSON)."""
    path = POOLS[kind][2]
    return json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())


def create(kind: str, prefect: str = "prefect") -> None:
    name, pool_type, _ = POOLS[kind]
    with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
        json.dump(template(kind), f)
        f.flush()
        subprocess.run([prefect, "work-pool", "create", name, "--type", pool_type, "--base-job-template", f.name,
                        "--overwrite"], check=True)  # fmt: skip


def main(argv: list[str]) -> int:
    kinds = argv or list(POOLS)
    unknown = [k for k in kinds if k not in POOLS]
    if unknown:
        print(f"unknown pool kind(s) {', '.join(unknown)}; valid: {', '.join(POOLS)}", file=sys.stderr)
        return 2
    prefect = str(Path(sys.executable).parent / "prefect")
    for kind in kinds:
        create(kind, prefect)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
