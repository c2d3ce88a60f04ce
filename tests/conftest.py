import pytest
import torch

# Tests use one intra-op thread: the tensors are small, and on a shared 2-core machine OpenMP threads that
# spin-wait for each other make small ops up to 10x slower. Benchmarks use the default thread count.
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)

# Lightning adds a StreamHandler bound to the sys.stderr of the moment it is first imported; imported inside a
# test under capsys, that stream is closed after the test and later log lines print "--- Logging error ---".
import lightning.pytorch  # noqa: E402,F401
