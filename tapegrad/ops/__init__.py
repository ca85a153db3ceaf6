"""The built-in ops, one module per family. Importing this package registers them all."""

from . import compare, elementwise, linalg, nn, reduce, shape

FAMILIES = (elementwise, compare, reduce, shape, linalg, nn)
