"""Writing TensorBoard summaries to event files, with or without TensorFlow.

Shared by `BatchNormMonitor` (its scalars, histograms and custom-scalars
layout) and the tuner's `BNHyperModel` (a trial's HParams). On the
TensorFlow backend it writes through `tf.summary`; on the other backends
through TensorBoard's record format, which needs no TensorFlow and does not
import it when it is installed (TensorBoard's `EventFileWriter` would,
through `tf.io.gfile`: seconds on the JAX backend). The protos are the same
either way.
"""

import itertools
import os
import socket
import time

import keras
from tensorboard.compat.proto import event_pb2
from tensorboard.summary.writer.record_writer import RecordWriter


class EventFile:
    """Appends events to a new event file in a local folder, synchronously.

    The file is named as TensorBoard's `EventFileWriter` names its files;
    the folder is made if missing, as `EventFileWriter` and `tf.summary`
    make theirs.
    """

    _uid = itertools.count()

    def __init__(self, run_dir):
        name = (
            f"events.out.tfevents.{int(time.time()):010d}."
            f"{socket.gethostname()}.{os.getpid()}.{next(self._uid)}"
        )
        os.makedirs(run_dir, exist_ok=True)
        # Closed by `close`.
        stream = open(os.path.join(run_dir, name), "wb")  # noqa: SIM115
        self._records = RecordWriter(stream)
        self.add_event(
            event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2")
        )

    def add_event(self, event):
        self._records.write(event.SerializeToString())
        self._records.flush()

    def flush(self):
        self._records.flush()

    def close(self):
        self._records.close()


class SummaryWriter:
    """Writes `Summary` protos to an event file in `run_dir`.

    On the TensorFlow backend through `tf.summary`; on other backends
    through `EventFile`, or, for remote paths such as `gs://...`,
    TensorBoard's `EventFileWriter`.
    """

    def __init__(self, run_dir):
        self._tf = None
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            self._tf = tf
            self._writer = tf.summary.create_file_writer(run_dir)
        elif "://" in run_dir:
            from tensorboard.summary.writer.event_file_writer import (
                EventFileWriter,
            )

            self._writer = EventFileWriter(run_dir)
        else:
            self._writer = EventFile(run_dir)

    def write(self, summary, step):
        if self._tf is not None:
            with self._writer.as_default():
                self._tf.summary.experimental.write_raw_pb(
                    summary.SerializeToString(), step=int(step)
                )
        else:
            self._writer.add_event(
                event_pb2.Event(
                    wall_time=time.time(), step=int(step), summary=summary
                )
            )

    def close(self):
        self._writer.flush()
        self._writer.close()
