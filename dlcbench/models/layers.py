"""Custom Keras layers used by the zoo, registered so saved ``.keras`` files reload."""

from __future__ import annotations

from dlcbench.quiet import import_quietly

keras = import_quietly("keras")


@keras.saving.register_keras_serializable(package="dlcbench")
class PositionEmbedding(keras.layers.Layer):
    """Adds a learned position embedding of shape ``(seq_len, hidden)``."""

    def __init__(self, seq_len: int, hidden: int, **kwargs):
        super().__init__(**kwargs)
        self.seq_len = seq_len
        self.hidden = hidden

    def build(self, input_shape):
        self.table = self.add_weight(
            name="table", shape=(self.seq_len, self.hidden), initializer=keras.initializers.RandomNormal(stddev=0.02)
        )

    def call(self, x):
        return x + self.table[None, :, :]

    def get_config(self):
        return {**super().get_config(), "seq_len": self.seq_len, "hidden": self.hidden}


@keras.saving.register_keras_serializable(package="dlcbench")
class LastToken(keras.layers.Layer):
    """Selects the last sequence position: ``(batch, seq, hidden) -> (batch, hidden)``."""

    def call(self, x):
        return x[:, -1, :]
