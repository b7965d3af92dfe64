"""Fashion-MNIST from Debian's dataset-fashion-mnist package: IDX files read with gzip and
numpy. Pixels become float32 in [0, 1] shaped (n, 1, 28, 28); labels int32 0..9."""
import gzip

import numpy as np

DATA = "/usr/share/datasets/fashion-mnist"


def read_idx(path):
    """An IDX file: 0x0000, type 0x08 (ubyte), ndim, big-endian int32 dims, then the data."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if raw[:3] != b"\0\0\x08":
        raise ValueError("%s is not an IDX ubyte file" % path)
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load(split, data=DATA):
    """The "train" or "t10k" split as (images, labels)."""
    x = read_idx("%s/%s-images-idx3-ubyte.gz" % (data, split))
    y = read_idx("%s/%s-labels-idx1-ubyte.gz" % (data, split))
    return (x.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28), y.astype(np.int32)
