"""circ's built-in passes, one per module; importing this package registers them all."""

from passes import dce, fold_bn, fold_constants, remove_identity  # noqa: F401
from passes import binary, prune, ternary  # noqa: F401
from passes import quant  # noqa: F401
from passes import cluster  # noqa: F401
from passes import huffman  # noqa: F401
from passes import depthwise, svd  # noqa: F401
from passes import channel_prune  # noqa: F401
from passes import auto_prune, schedule, sensitivity  # noqa: F401
from passes import finetune  # noqa: F401
