"""Test setup: 8 fake CPU devices for the parallel tests (must precede the first jax import), and
one persistent XLA compilation cache for the whole test run.

Many tests compile the same programs (a resumed run compiles what the straight run did; the
CLI tests' subprocesses compile what the in-process tests did): the cache, shared by the xdist
workers and every subprocess they start (they inherit the environment), compiles each once. It is
a fresh directory per run, removed at the end, so no test sees a previous run's executables.
"""

import os
import shutil
import tempfile

# LLVM's expensive passes cost ~10 % of the suite's compile-bound time and speed up none of its
# tiny programs measurably (XLA's own optimisations stay on).
os.environ.setdefault(
    "XLA_FLAGS",
    "--xla_force_host_platform_device_count=8 --xla_llvm_disable_expensive_passes=true",
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("MPLBACKEND", "Agg")
# Two xdist workers share 2 cores with XLA's threads: a multi-threaded BLAS (scipy's sqrtm in
# FID) then spends ~1 s where one thread takes 10–60 ms.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# The xdist controller imports this file before it starts its workers, which inherit the
# variables: the controller creates the directory, the workers find it set.
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="noise_research_xla_")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")


def pytest_sessionfinish(session, exitstatus):
    """The process that created the cache removes it (the controller, after its workers)."""
    if _OWN_CACHE and not hasattr(session.config, "workerinput"):
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
