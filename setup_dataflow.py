"""What Dataflow workers install for `sketch-rnn preprocess` (`--setup_file ./setup_dataflow.py`).

The workers run only `pipeline/` (and `model/strokes.py`, which it imports): Apache Beam and NumPy,
no TensorFlow (1.9 GB per worker with ./setup.py). The TFRecords and tf.train.Examples are encoded
without TensorFlow (`pipeline/records.py`); the launching machine keeps using the full package.
`tests/test_conventions.py` checks that the pipeline runs with TensorFlow unimportable.
"""

from setuptools import setup

setup(
    name="sketch-rnn-tf-pipeline",
    version="0.1.0",
    description="The Beam pipeline of sketch-rnn-tf, for Dataflow workers",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=["pipeline", "model"],
    install_requires=["apache-beam[gcp]==2.77.0", "numpy>=1.26,<3"],
)
