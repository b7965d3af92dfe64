"""Fine-tune a pretrained model on new data and save it: the guide's Python quick start.
Reads pretrained.tlc, images.npy (n, C, H, W) and labels.npy (n,) from the current
directory and writes finetuned.tlc there."""
import numpy as np
import tlearn

x = np.load("images.npy").astype(np.float32)  # (n, C, H, W)
y = np.load("labels.npy").astype(np.int32)    # (n,)
with tlearn.Model.load("pretrained.tlc") as model, tlearn.Optimizer("adam", lr=1e-3) as opt:
    model.replace_head("fc1", 10)
    model.apply_freeze(tlearn.FreezePolicy().until("fc1"))
    model.fit(opt, x, y, batch=32, epochs=5)
    model.save("finetuned.tlc", opt)
