"""ResNet-50 (fp16, NHWC inside, batch 1..256 symbolic) as `bench/models.py` times it, for `kiln compile`:

    PYTHONPATH=. kiln compile bench/farm_models/resnet50.py --target cuda:sm90

The torch model is seeded, so importing it again on the GPU machine gives the same weights, and
`bench/check_artifact.py --model bench/farm_models/resnet50.py` can hold the farm-built artifact to
the float64 reference there.
"""
from __future__ import annotations

import kiln
from bench.models import make


def build():
    model, inputs, dynamic = make("resnet50")
    return kiln.from_torch(model.half(), tuple(t.half() for t in inputs(2)), dynamic_shapes=dynamic, name="resnet50")
