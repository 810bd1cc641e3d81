import pytest

from polyhead.demo.synthetic import generate_synthetic_dataset


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory):
    """3 training + 1 validation scenes, 64 px, 4 bands, 4 classes, three annotators."""
    return generate_synthetic_dataset(
        tmp_path_factory.mktemp("synthetic"), n_train=3, n_val=1, size=64
    )


@pytest.fixture(scope="session")
def synthetic_rgb6(tmp_path_factory):
    """Scenes shaped for the seed's config: 3 bands, 6 classes."""
    return generate_synthetic_dataset(
        tmp_path_factory.mktemp("synthetic_rgb6"), n_train=2, n_val=1, size=64, bands=3, n_classes=6
    )
