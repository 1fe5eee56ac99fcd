"""The suite mirrors the package (a folder per subpackage); the shared helpers (``helpers``, ``processes``,
``range_test_helpers``, ``tuning_helpers``, ``cli_models``) and the subprocess scripts stay here, importable
from every folder."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
