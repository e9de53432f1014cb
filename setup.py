"""sketch-rnn on TensorFlow: Beam preprocessing, Keras 3 model, tf.distribute trainer, serving.

`pip install -e .` installs the `sketch-rnn` command. The same file is what Dataflow workers
install (`--setup_file ./setup.py`).
"""

from setuptools import find_packages, setup

setup(
    name="sketch-rnn-tf",
    version="0.1.0",
    description="sketch-rnn (Ha & Eck 2017) end to end on TensorFlow 2 / Keras 3 and Apache Beam",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["pipeline", "pipeline.*", "model", "model.*",
                                    "trainer", "trainer.*", "deploy", "deploy.*"]),
    # The shipped models (deploy/pretrained/NAME/MODEL_CARD.md and NAME/<version>/ SavedModels).
    package_data={"trainer": ["kernels/*.cc"],
                  "deploy": ["static/*", "launch/*", "pretrained/*/*.md", "pretrained/*/*/*.pb",
                             "pretrained/*/*/variables/*", "pretrained/*/*/assets.extra/*"]},
    # Pinned to the versions that are tested together.
    install_requires=[
        "tensorflow==2.21.0",
        "keras>=3.10,<4",
        "apache-beam[gcp]==2.77.0",
        "numpy>=1.26,<3",
        # `tensorboard --logdir MODEL_DIR`: the trainer writes tf.summary scalars and sample images.
        "tensorboard>=2.21,<2.22",
        # Sample grids (TensorBoard, `sample --png`) and the classifier's rasters.
        "pillow>=10",
        # `sketch-rnn serve`: a WSGI app on a pure-Python, dependency-free server.
        "flask>=3.0,<4",
        "waitress>=3.0,<4",
    ],
    extras_require={
        "test": ["pytest>=8", "selenium>=4.20,<5"],
    },
    entry_points={"console_scripts": ["sketch-rnn=deploy.cli:console_main"]},
)
