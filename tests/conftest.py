import os
import sys

from hypothesis import HealthCheck, settings

# helper modules and subprocess scripts of the tests (tests/support/) are imported by name
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "support"))

# Deterministic by default: derandomised, no example database, no deadline (CI machines are slow
# and shared). HYPOTHESIS_PROFILE=explore searches with fresh randomness for local bug hunting.
settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("explore", deadline=None, max_examples=500)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
