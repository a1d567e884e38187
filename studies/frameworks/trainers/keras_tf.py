"""The base model in Keras 3 on TensorFlow, trained by `model.fit`. `python keras_tf.py JOB_DIR`."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import protocol  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import layers  # noqa: E402


def build(job: dict, in_dim: int, classes: int) -> keras.Model:
    model = keras.Sequential([
        keras.Input((in_dim,)),
        layers.Dense(job["hidden"], activation="relu", kernel_initializer="glorot_uniform", bias_initializer="zeros"),
        layers.Dense(classes, kernel_initializer="glorot_uniform", bias_initializer="zeros"),
    ])
    b1, b2 = job["betas"]
    # Keras' Adam eps defaults to 1e-7; the job's (1e-8, PyTorch's and MXNet's default) is passed on.
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=job["lr"], beta_1=b1, beta_2=b2, epsilon=job["eps"]),
                  loss=keras.losses.BinaryCrossentropy(from_logits=True))
    return model


class Epochs(keras.callbacks.Callback):
    def __init__(self, rec: protocol.Recorder, infer: keras.Model, val_x, eval_batch_size: int):
        super().__init__()
        self.rec, self.infer, self.val_x, self.bs = rec, infer, val_x, eval_batch_size

    def on_epoch_begin(self, epoch, logs=None):
        self.rec.epoch_start()

    def on_epoch_end(self, epoch, logs=None):
        self.rec.train_end()
        probs = self.infer.predict(self.val_x, batch_size=self.bs, verbose=0)
        self.rec.eval_end(probs, logs["loss"])


def train(job: dict, job_dir) -> None:
    n = job["threads"]
    tf.config.threading.set_intra_op_parallelism_threads(n)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    keras.utils.set_random_seed(job["seed"])
    x, y, v = protocol.load_inputs(job)
    model = build(job, x.shape[1], y.shape[1])
    infer = keras.Sequential([model, layers.Activation("sigmoid")])
    threads = {"intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
               "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
               "jit_compile": str(model.jit_compile)}
    rec = protocol.Recorder(job_dir, "tensorflow", {"tensorflow": tf.__version__, "keras": keras.__version__},
                            threads)
    # One fit over all epochs, as Keras is used; it shuffles the clips each epoch itself.
    model.fit(x, y, batch_size=job["batch_size"], epochs=job["epochs"], shuffle=True, verbose=0,
              callbacks=[Epochs(rec, infer, v, job["eval_batch_size"])])


if __name__ == "__main__":
    raise SystemExit(protocol.main(train))
