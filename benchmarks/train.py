"""Training epoch time of the demo's three models vs the same models in PyTorch (issue 9).

    PYTHONPATH=build/dev-NAME/site python benchmarks/train.py [--models cnn,lstm,transformer]
                                                              [--rounds 5] [--threads N] [--quick]

The measurement lives in the package (nablagrad/benchmark/train.py, also part of
``python -m nablagrad.benchmark``); see its docstring for the method. Targets: CNN at least 2x
PyTorch, LSTM and transformer at least 1x.
"""

from __future__ import annotations

from nablagrad.benchmark.train import main

if __name__ == "__main__":
    main()
