"""lmsgd: the large-minibatch SGD recipe of Akiba, Suzuki and Fukuda (2017) in JAX/Flax."""

from lmsgd import _quiet  # noqa: F401  (first: a quiet start-up before TF or JAX load)

__version__ = "0.1.0"
