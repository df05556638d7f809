import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Services made by tests skip the warm-up (ServiceSettings.warm_up): their maps are test doubles that count their
# calls or sleep; tests/test_batching.py turns it on where the warm-up itself is tested.
os.environ.setdefault("SPIKEBOT_WARM_UP", "false")


@pytest.fixture
def one_torch_thread():
    """For modules of tiny tensors (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``): a second
    intra-op thread only adds synchronisation and fights other work for the cores (5x slower on a busy 2-core box)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def shared_data() -> Path:
    """The real datasets under $SPIKEBOT_DATA; tests that need them skip with the reason when absent."""
    root = os.environ.get("SPIKEBOT_DATA")
    if not root:
        pytest.skip("SPIKEBOT_DATA is not set: real-data tests need the shared datasets")
    path = Path(root).resolve()
    if not path.is_dir():
        pytest.skip(f"SPIKEBOT_DATA={root} does not exist")
    return path


def write_images(folder: Path, images: np.ndarray, suffix: str = ".png") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, image in enumerate(images):
        path = folder / f"frame{index:03d}{suffix}"
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths
