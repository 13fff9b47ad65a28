"""Data parallelism on a device mesh with JAX's own sharding (``jax.shard_map``)."""

from jaxsecond.parallel._data_parallel import (
    data_parallel_adahessian_step as data_parallel_adahessian_step,
)
from jaxsecond.parallel._data_parallel import data_parallel_rarts as data_parallel_rarts
from jaxsecond.parallel._data_parallel import data_parallel_search as data_parallel_search
from jaxsecond.parallel._data_parallel import replicate as replicate
from jaxsecond.parallel._data_parallel import shard_batch as shard_batch
