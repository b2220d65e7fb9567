"""`python -m tcurlora` runs the command-line interface."""

import os
import sys

# Before torch (and its OpenMP runtime) is imported: OpenMP threads that finish a parallel region
# spin, waiting for the next one, instead of sleeping. On a shared CPU (Slicer's worker beside Slicer
# and other programs) the spinning threads steal the cores the other processes, and this process's
# own lagging threads, need; PASSIVE makes them sleep. A value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from tcurlora.cli import main  # noqa: E402
from tcurlora.torchrun_env import launched

code = main()
if launched():
    # Under torchrun, leave without the interpreter's teardown: gloo's C++ state can abort a rank at exit
    # ("terminate called without an active exception") after its work is written and its group destroyed.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
raise SystemExit(code)
