"""ResNet-50 (≈25.6 M parameters, 224×224) exported from PyTorch, imported into cnngraph, timed
against ONNX Runtime at batch 1 and 16.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/onnx_resnet50.py [--repeat 5]
"""
from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
import warnings

import numpy as np


def resnet50():
    import torch.nn as nn

    class Bottleneck(nn.Module):
        def __init__(self, cin, width, stride):
            super().__init__()
            cout = width * 4
            self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(width)
            self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU()
            self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                               if stride != 1 or cin != cout else None)

        def forward(self, x):
            y = self.relu(self.bn1(self.conv1(x)))
            y = self.relu(self.bn2(self.conv2(y)))
            y = self.bn3(self.conv3(y))
            return self.relu(y + (x if self.downsample is None else self.downsample(x)))

    class ResNet50(nn.Module):
        def __init__(self, classes=1000):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU()
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            layers, cin = [], 64
            for i, (width, blocks) in enumerate([(64, 3), (128, 4), (256, 6), (512, 3)]):
                stage = []
                for b in range(blocks):
                    stage.append(Bottleneck(cin, width, 2 if b == 0 and i > 0 else 1))
                    cin = width * 4
                layers.append(nn.Sequential(*stage))
            self.layer1, self.layer2, self.layer3, self.layer4 = layers
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(2048, classes)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(self.avgpool(x).flatten(1))

    return ResNet50()


def timed_alternately(ours, theirs, repeat, rounds=3):
    """Median seconds of each over ``rounds`` alternating blocks of ``repeat`` timed runs. Each block
    starts with an untimed run, so both run warm (ORT's spinning thread pool is ~2x slower at
    batch 1 when woken once per call), and the alternation spreads other load over both."""
    times = ([], [])
    for _ in range(rounds):
        for fn, out in zip((ours, theirs), times):
            fn()
            for _ in range(repeat):
                t = time.perf_counter()
                fn()
                out.append(time.perf_counter() - t)
    return float(np.median(times[0])), float(np.median(times[1]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--keep", metavar="DIR", help="keep the .onnx and imported spec here")
    args = ap.parse_args()

    import onnxruntime as ort
    import torch
    from cnngraph.onnx import import_onnx
    from cnngraph.passes import CALIBRATION_TRIALS, optimize_for_inference

    torch.manual_seed(0)
    net = resnet50().eval()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    workdir = args.keep or tempfile.mkdtemp(prefix="cnngraph_r50_")
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "resnet50.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(1, 3, 224, 224),), path, dynamo=False, opset_version=17,
                          input_names=["image"], output_names=["logits"], dynamic_axes={"image": {0: "batch"}})
    t = time.perf_counter()
    model = import_onnx(path)
    t_import = time.perf_counter() - t
    print(f"ResNet-50: {model.param_count():,} parameters, {len(model.spec.layers)} layers, "
          f"imported in {t_import:.1f} s")
    # Inference graph passes, as ORT applies its own graph optimisations (relu fused into conv/add).
    fast = optimize_for_inference(model)

    opts = ort.SessionOptions()
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    print(f"{'batch':>5} | {'cnngraph ms':>12} | {'ORT ms':>8} | {'ratio':>6} | {'max rel diff':>12}")
    for batch in args.batches:
        x = rng.standard_normal((batch, 3, 224, 224)).astype(np.float32)
        ours = fast.forward({"image": x})["logits"]
        for _ in range(2 * CALIBRATION_TRIALS):   # the first passes time two ways to use the cores (see passes)
            fast.forward({"image": x})
        ref = sess.run(None, {"image": x})[0]
        diff = float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))
        c_med, o_med = timed_alternately(lambda: fast.forward({"image": x}),
                                         lambda: sess.run(None, {"image": x}), args.repeat)
        print(f"{batch:>5} | {c_med * 1e3:>12.1f} | {o_med * 1e3:>8.1f} | {c_med / o_med:>5.2f}x | {diff:>12.2e}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory of this process (torch + ORT + cnngraph): {peak:.0f} MiB")


if __name__ == "__main__":
    main()
