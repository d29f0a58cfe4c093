import os

# Keep KeOps' compiled formulas in the project's ignored build folder (see Makefile).
os.environ.setdefault("KEOPS_CACHE_FOLDER", os.path.join(os.path.dirname(os.path.dirname(__file__)), "build", "keops"))
os.environ.setdefault("MPLBACKEND", "Agg")
