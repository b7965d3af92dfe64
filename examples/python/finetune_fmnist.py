"""Fine-tune on Fashion-MNIST from Python with libtlearn.

1. Pretrain a small CNN on 8 of the 10 classes (every class but 0 "T-shirt" and 6 "shirt").
2. Replace its head with a 10-way one, freeze the convolutions, and fine-tune fc1 and the
   head on a few labelled images per class, with discriminative learning rates.
3. Report the accuracy on the test set and save the fine-tuned model.

The IDX files of Debian's dataset-fashion-mnist package are read with gzip + numpy.
Usage: finetune_fmnist.py [--quick] [--per-class K] [--save PATH] [--data DIR]
"""
import argparse
import sys
import time

import numpy as np

import tlearn
from fmnist import DATA, load  # the IDX reader (gzip + numpy)


def progress(label):
    def show(epoch, epochs, step, steps, loss):
        if step + 1 == steps:
            print("%s epoch %d/%d loss %.4f" % (label, epoch + 1, epochs, loss), flush=True)
    return show


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a reduced run for tests")
    ap.add_argument("--per-class", type=int, default=20, help="labelled images per class")
    ap.add_argument("--save", default="finetuned-fmnist.tlc")
    ap.add_argument("--data", default=DATA)
    args = ap.parse_args()
    pre_n, pre_epochs, test_n = (12000, 1, 2000) if args.quick else (60000, 2, 10000)

    x_train, y_train = load("train", args.data)
    x_test, y_test = load("t10k", args.data)
    x_test, y_test = x_test[:test_n].copy(), y_test[:test_n].copy()

    # 1. Pretraining on 8 classes, relabelled 0..7.
    old = np.array([1, 2, 3, 4, 5, 7, 8, 9])
    keep = np.isin(y_train[:pre_n], old)
    x_pre = np.ascontiguousarray(x_train[:pre_n][keep])
    y_pre = np.searchsorted(old, y_train[:pre_n][keep]).astype(np.int32)
    model = tlearn.Model(1, 28, 28).set_seed(42)
    (model.add_conv2d("conv1", 16, 3, 1, 1, 1).add_relu("relu1").add_maxpool2d("pool1", 2)
          .add_conv2d("conv2", 32, 3, 1, 1, 1).add_relu("relu2").add_maxpool2d("pool2", 2)
          .add_flatten("flat").add_dense("fc1", 64).add_relu("relu3").add_dense("fc2", 8))
    t0 = time.time()
    with tlearn.Optimizer("adam", lr=2e-3) as opt:
        model.fit(opt, x_pre, y_pre, batch=64, epochs=pre_epochs,
                  progress=progress("pretrain"))
    print("pretrained on %d images in %.1f s" % (len(y_pre), time.time() - t0))

    # 2. A new 10-way head; convolutions frozen, fc1 at a third of the head's rate.
    idx = np.concatenate([np.flatnonzero(y_train == k)[:args.per_class] for k in range(10)])
    x_few, y_few = np.ascontiguousarray(x_train[idx]), np.ascontiguousarray(y_train[idx])
    model.replace_head("relu3", 10)
    with tlearn.FreezePolicy() as policy:
        model.apply_freeze(policy.until("pool2").lr_scale("fc1", 1 / 3))
    total, trainable = model.param_count()
    print("fine-tuning %d of %d parameters on %d images" % (trainable, total, len(y_few)))
    with tlearn.Optimizer("adam", lr=3e-3) as opt:
        model.fit(opt, x_few, y_few, batch=16, epochs=30 if args.quick else 60,
                  progress=progress("finetune") if not args.quick else None)
        loss, acc = model.evaluate(x_test, y_test)
        print("finetuned accuracy=%.4f (test loss %.4f, %d test images)" % (acc, loss, test_n))
        model.set_metadata("dataset", "fashion-mnist")
        model.save(args.save, opt)
    print("saved", args.save)
    model.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
