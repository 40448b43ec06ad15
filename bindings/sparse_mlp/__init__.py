"""sparse_mlp: a differential active-weight cache for contextually sparse MLPs.

    from sparse_mlp import WeightCacheOptimized, LlamaSkipMLP

``WeightCache`` is the full API (views, gate-less mode, tolerance, threads,
footprint); ``WeightCacheOptimized`` is the seed design's API on top of it;
``LlamaSkipMLP`` is a LLaMA MLP (``down(silu(gate(x)) * up(x))``) that computes
only the active neurons through the cache's fused layer step;
``mlp_forward`` is the native forward on full weights (dense or over indices);
``ModelCache`` holds every layer of a model in one pool, with batched updates;
``sparse_mlp.store`` writes and reads neuron-bundle weight files, and
``ModelCache.from_file`` (a ``FlashModelCache``) serves a model's MLPs from one
under a DRAM budget (the SSD tier); ``sparsify(model, sparsity=...)`` makes
every MLP of a model sparse (gate-first by default, or learned low-rank
predictors from ``sparse_mlp.predictors``), ``densify`` undoes it.
"""

from sparse_mlp._version import __version__
from sparse_mlp.cache import WeightCache, WeightCacheOptimized
from sparse_mlp.mlp import LlamaSkipMLP, mlp_forward
from sparse_mlp.model import ModelCache
from sparse_mlp.quant import QuantizedMLP, QuantizedTensor, quantize, quantize_mlp
from sparse_mlp.flash import FlashModelCache
from sparse_mlp.predictors import LowRankPredictor
from sparse_mlp.sparsify import densify, sparsify
from sparse_mlp import predictors  # gate-first and low-rank masks, training
from sparse_mlp import store  # the bundle-file tier: sparse_mlp.store.write / Reader / convert

__all__ = ["WeightCache", "WeightCacheOptimized", "LlamaSkipMLP", "mlp_forward", "ModelCache",
           "FlashModelCache", "LowRankPredictor", "sparsify", "densify", "quantize",
           "quantize_mlp", "QuantizedTensor", "QuantizedMLP"]
