import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the tests may reach a hub


@pytest.fixture
def pool():
    import mpool

    p = mpool.Pool(maintenance_interval=0.02, request_timeout=20.0)
    yield p
    p.close()
