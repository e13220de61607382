import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# exemplar-statistics cache of the test session: never the user's ~/.cache
import tempfile

os.environ["DRAGONTUNE_CACHE"] = tempfile.mkdtemp(prefix="dragontune-test-cache-")

import pytest
import torch


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)
    yield
