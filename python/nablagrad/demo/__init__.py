"""The digits demo: ``python -m nablagrad.demo`` (or the ``nablagrad-demo`` console script).

Trains a small model on the 8x8 handwritten digits shipped with nablagrad and writes the
weights (``digits_<model>.safetensors``) and a PNG with the training curves and the
misclassified test digits::

    python -m nablagrad.demo                       # LeNet-style CNN
    python -m nablagrad.demo --model lstm          # each image as 8 steps of 8 pixels
    python -m nablagrad.demo --model transformer   # the 8 rows as tokens, a small encoder
    python -m nablagrad.demo --resume demo-output/digits_cnn.safetensors --epochs 20

The progress bar needs ``tqdm`` and the PNG ``matplotlib`` (``pip install "nablagrad[demo]"``);
without them the demo prints one line per epoch and skips the PNG. The code is in
``nablagrad/demo/__main__.py``.
"""
