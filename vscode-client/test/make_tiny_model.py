"""Build the tiny test model for the e2e test: make_tiny_model.py TEACHER_DIR [HOME_DIR].

Writes a tiny trained teacher (tests/tiny.py) to TEACHER_DIR and, when HOME_DIR is given,
compresses it to int8 as the active artifact of POCKETPILOT_HOME=HOME_DIR.
"""

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

from tiny import make_tiny_teacher  # noqa: E402

teacher = make_tiny_teacher(Path(sys.argv[1]))
if len(sys.argv) > 2:
    os.environ["POCKETPILOT_HOME"] = sys.argv[2]
    from pocketpilot.compression import compress

    compress(str(teacher), "int8", eval_tasks=0)
print(teacher)
