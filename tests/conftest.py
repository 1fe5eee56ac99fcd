"""The suite mirrors the package (a folder per subpackage); the shared helpers (``helpers``, ``processes``,
``range_test_helpers``, ``tuning_helpers``, ``cli_models``) and the subprocess scripts stay here, importable
from every folder."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

# One pytest-xdist worker per core, one torch thread per worker: the tests' models are tiny, and two intra-op
# threads per worker oversubscribe the cores (the noisy-regression test ran 25% faster on one thread).
# Subprocess tests get the same through OMP_NUM_THREADS=1 (processes.clean_env).
torch.set_num_threads(1)
