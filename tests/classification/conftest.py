import pytest

from polyhead.classification.digits import write_digits


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    """90 bundled digits as PNGs + train/val/test CSVs (class ids 0/1/2)."""
    return write_digits(tmp_path_factory.mktemp("digits"), limit=90)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread: on a shared 2-core machine, 2 threads contend and run ~5x slower."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
