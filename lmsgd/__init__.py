"""lmsgd: the large-minibatch SGD recipe of Akiba, Suzuki and Fukuda (2017) in JAX/Flax."""

__version__ = "0.1.0"
