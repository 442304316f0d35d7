"""Validates ATIF trajectories with Harbor's own models (harbor==0.26.0, its trajectory
models taken from the wheel by tests/sdk/start.sh): the pydantic Trajectory, and Harbor's
TrajectoryValidator, which also checks that every referenced image file exists.

    python tests/sdk/atif.py DIR/trajectory.json ...

Prints one JSON line per file: {"path", "ok", "errors", "steps", "multimodal",
"schema_version", "llm_call_counts"}.
"""

import json
import os
import sys

sys.path.insert(0, os.path.join(sys.prefix, "harbor-atif"))

from harbor.models.trajectories import Trajectory  # noqa: E402
from harbor.utils.trajectory_validator import TrajectoryValidator  # noqa: E402

for path in sys.argv[1:]:
    validator = TrajectoryValidator()
    ok = validator.validate(path)
    report = {"path": path, "ok": ok, "errors": validator.get_errors()}
    if ok:
        with open(path) as f:
            t = Trajectory.model_validate(json.load(f))
        report.update(
            steps=len(t.steps),
            multimodal=t.has_multimodal_content(),
            schema_version=t.schema_version,
            llm_call_counts=[s.llm_call_count for s in t.steps],
        )
    print(json.dumps(report))
