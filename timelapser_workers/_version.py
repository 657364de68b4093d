"""The package's version, in one place: setup.py reads this file (without importing the
package), ``timelapser_workers.__version__`` and ``timelapser-workers --version`` import it."""

__all__ = ["__version__"]

__version__ = "0.2.0"
