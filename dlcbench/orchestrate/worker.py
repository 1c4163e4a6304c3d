"""Worker process for :func:`dlcbench.orchestrate.launcher.run_isolated`: ``python -m dlcbench.orchestrate.worker JOB.json OUT.json``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from dlcbench.errors import DlcbenchError, one_line


def main(job_path: str, out_path: str) -> int:
    from dlcbench.orchestrate.launcher import failure_row, job_from_dict, result_row
    from dlcbench.measure.job import run_job

    try:
        job = job_from_dict(json.loads(Path(job_path).read_text()))
        row = result_row(run_job(job))
    except DlcbenchError as err:
        row = failure_row(err.category, str(err))
    except Exception as err:  # the job failed in a way no adapter classified
        row = failure_row("runtime_error", f"{type(err).__name__}: {one_line(err, 800)}")
    tmp = Path(out_path + ".tmp")
    tmp.write_text(json.dumps(row, default=str))
    tmp.replace(out_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
