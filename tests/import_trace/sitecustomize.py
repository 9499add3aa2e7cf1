"""Put on PYTHONPATH by the end-to-end test: every Python process started with
MNA_TUNE_IMPORT_TRACE set writes, at exit, its command line and the files of the mna_tune
modules it imported, so the test can compare what each stage really loaded with its
dvc.yaml deps."""

import atexit
import json
import os
import sys

_TRACE_DIR = os.environ.get("MNA_TUNE_IMPORT_TRACE")


def _write_trace() -> None:
    files = sorted(
        {
            getattr(module, "__file__", None) or ""
            for name, module in list(sys.modules.items())
            if name == "mna_tune" or name.startswith("mna_tune.")
        }
        - {""}
    )
    if files:
        with open(os.path.join(_TRACE_DIR, f"{os.getpid()}.json"), "w", encoding="utf-8") as out:
            json.dump({"argv": sys.argv, "files": files}, out)


if _TRACE_DIR:
    atexit.register(_write_trace)
