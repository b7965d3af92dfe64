"""The Python examples run as a user would run them: quickstart.py (the guide's snippet)
and finetune_fmnist.py on the real Fashion-MNIST."""
import os
import subprocess
import sys

import numpy as np

import tlearn

EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(tlearn.__file__)), "..")


def run(script, *args, cwd=None):
    proc = subprocess.run([sys.executable, os.path.join(EXAMPLES, script)] + list(args),
                          capture_output=True, text=True, timeout=600, cwd=cwd)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_quickstart_finetunes_and_saves(tmp_path):
    rng = np.random.default_rng(0)
    with tlearn.Model(1, 8, 8) as m:  # a "pretrained" model: conv backbone, fc1, 4 classes
        (m.set_seed(1).add_conv2d("conv1", 4, 3, 1, 1, 1).add_relu("relu1").add_flatten("flat")
          .add_dense("fc1", 16).add_dense("fc2", 4))
        m.save(str(tmp_path / "pretrained.tlc"))
        conv_before = m.get_tensor("conv1.weight")
    y = (np.arange(64) % 10).astype(np.int64)
    x = rng.normal(size=(64, 1, 8, 8))
    x[np.arange(64), 0, y % 8, y // 8 * 4] += 3
    np.save(tmp_path / "images.npy", x)  # float64 and int64: the script converts them
    np.save(tmp_path / "labels.npy", y)
    run("quickstart.py", cwd=str(tmp_path))
    with tlearn.Model.load(str(tmp_path / "finetuned.tlc")) as m:
        assert m.layers == ["conv1", "relu1", "flat", "fc1", "head"]
        assert m.output_shape == (10, 1, 1)
        assert m.layer_frozen("fc1") and not m.layer_frozen("head")
        np.testing.assert_array_equal(m.get_tensor("conv1.weight"), conv_before)


def test_finetune_fmnist_example(tmp_path):
    out = run("finetune_fmnist.py", "--quick", "--save", str(tmp_path / "ft.tlc"))
    acc = [float(line.split("=")[1].split()[0]) for line in out.splitlines()
           if line.startswith("finetuned accuracy=")]
    assert len(acc) == 1, out
    assert acc[0] > 0.5, out  # 10 classes: chance is 0.1
    assert os.path.getsize(tmp_path / "ft.tlc") > 0
