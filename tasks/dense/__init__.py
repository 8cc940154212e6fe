"""Dense probing shared by NYUv2 depth and ADE20K segmentation: readouts, heads, training data,
sliding windows, and the protocol runner.

The backbone is frozen (eval mode, forward under no_grad); only the head trains, on mmengine's
Runner. What differs between depth and segmentation (output activation, loss, padding value,
per-image score, aggregation) is a `DenseTarget` that each task module defines. What differs
between the reference codes (Pixio's ``evaluation/`` and DINOv2's mmseg/depth-toolbox configs) is
in each protocol's parameters: window placement and merging, padding, ``align_corners``, the
training rescale rule, schedules. docs/protocols.md lists every number and its reference.

Heads (`HEADS` registry, each a `HeadSpec` with its own parameters): ``linear`` (BatchNorm + 1×1
conv), ``dpt`` (Pixio's DPT head), ``bins`` (DINOv2 lin.1/lin.4: 256 depth bins), ``upernet``
(segmentation, MAE style; here on the frozen backbone — MAE's numbers fine-tune it). Every head
declares what it reads: which blocks (``layers``), with or without the final norm (``norm``), and
whether the mean CLS token is concatenated to every patch token (``cls``).

The package, one concern per module: `readout` (blocks read), `heads` (and their `HEADS`
entries), `inference` (padding, sliding windows), `augment` (training data), `target` (what a task
defines), `protocol` (parameters, model, training and evaluation) and `metrics` (depth and
segmentation, each a named reference definition).
"""

from . import heads  # noqa: F401  (registers the heads)
