"""clbench: one harness for evaluating contrastive and self-supervised encoders.

Public API (imports are lazy, so ``import clbench`` stays light):

- :func:`clbench.api.run_suite` – run a suite file, as ``clbench run`` does;
- :func:`clbench.api.evaluate` – one encoder on one task, from option dicts;
- :func:`clbench.api.evaluate_features` – a protocol on in-memory features and labels.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "evaluate", "evaluate_features", "run_suite"]


def __getattr__(name):
    if name in ("run_suite", "evaluate", "evaluate_features"):
        from . import api

        return getattr(api, name)
    raise AttributeError(name)
