"""Keras 3 builders for the zoo. Imported lazily: this module imports Keras."""

from __future__ import annotations

import numpy as np

from dlcbench.models.layers import LastToken, PositionEmbedding
from dlcbench.quiet import import_quietly

keras = import_quietly("keras")

_RANDOMISED = ("bias", "beta", "gamma", "moving_mean", "moving_variance")


def randomise_affine_params(model: keras.Model, seed: int) -> None:
    """Fills biases and norm parameters with seeded random values.

    Freshly built Keras layers have zero biases and identity norms, which fold
    away and hide mistakes; random values make every term count.
    """
    rng = np.random.default_rng(seed + 1)
    for weight in model.weights:
        leaf = weight.path.split("/")[-1]
        if leaf not in _RANDOMISED:
            continue
        shape = tuple(weight.shape)
        if leaf in ("gamma",):
            value = rng.uniform(0.5, 1.5, shape)
        elif leaf == "moving_variance":
            value = rng.uniform(0.5, 1.5, shape)
        else:
            value = rng.normal(0.0, 0.1, shape)
        weight.assign(value.astype(weight.dtype))


def _finish(model: keras.Model, seed: int) -> keras.Model:
    randomise_affine_params(model, seed)
    return model


def build_mlp(seed: int = 0, features: int = 784, hidden: int = 512, classes: int = 10) -> keras.Model:
    """The seed's MLP: Dense(hidden, relu) -> Dropout(0.2) -> Dense(classes, softmax)."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((features,), name="input")
    x = keras.layers.Dense(hidden, activation="relu")(inp)
    x = keras.layers.Dropout(0.2)(x)
    out = keras.layers.Dense(classes, activation="softmax", name="probs")(x)
    return _finish(keras.Model(inp, out, name="mlp"), seed)


def build_cnn(seed: int = 0, size: int = 32, width: int = 32, classes: int = 10) -> keras.Model:
    """A small conv net: 3 x [Conv-BN-ReLU, pool] -> global pool -> Dense softmax."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((size, size, 3), name="input")
    x = inp
    for i, mult in enumerate((1, 2, 4)):
        x = keras.layers.Conv2D(width * mult, 3, padding="same", name=f"conv{i}")(x)
        x = keras.layers.BatchNormalization(name=f"bn{i}")(x)
        x = keras.layers.ReLU()(x)
        x = keras.layers.MaxPooling2D(2)(x) if i < 2 else keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(classes, activation="softmax", name="probs")(x)
    return _finish(keras.Model(inp, out, name="cnn"), seed)


def build_resnet50(seed: int = 0, size: int = 224, classes: int = 1000) -> keras.Model:
    """keras.applications.ResNet50 with random weights."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((size, size, 3), name="input")
    model = keras.applications.ResNet50(weights=None, input_tensor=inp, classes=classes)
    return _finish(keras.Model(inp, model.output, name="resnet50"), seed)


def build_mobilenetv2(seed: int = 0, size: int = 224, classes: int = 1000, alpha: float = 1.0) -> keras.Model:
    """keras.applications.MobileNetV2 with random weights."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((size, size, 3), name="input")
    model = keras.applications.MobileNetV2(weights=None, input_tensor=inp, classes=classes, alpha=alpha)
    return _finish(keras.Model(inp, model.output, name="mobilenetv2"), seed)


def _transformer_block(x, hidden: int, heads: int, ffn: int, causal: bool, index: int):
    attn = keras.layers.MultiHeadAttention(heads, hidden // heads, name=f"attn{index}")
    a = attn(x, x, use_causal_mask=causal)
    x = keras.layers.LayerNormalization(epsilon=1e-6, name=f"ln_attn{index}")(x + a)
    f = keras.layers.Dense(ffn, name=f"ffn_in{index}")(x)
    # Keras' "gelu" is the exact (erf) form; tf2onnx lowers it to TF Erfc, which export fixes.
    f = keras.layers.Activation("gelu", name=f"gelu{index}")(f)
    f = keras.layers.Dense(hidden, name=f"ffn_out{index}")(f)
    return keras.layers.LayerNormalization(epsilon=1e-6, name=f"ln_ffn{index}")(x + f)


def _transformer(name, seed, layers, hidden, heads, ffn, seq_len, vocab, causal):
    keras.utils.set_random_seed(seed)
    ids = keras.Input((seq_len,), dtype="int32", name="input_ids")
    x = keras.layers.Embedding(vocab, hidden, name="tok_emb")(ids)
    x = PositionEmbedding(seq_len, hidden, name="pos_emb")(x)
    for i in range(layers):
        x = _transformer_block(x, hidden, heads, ffn, causal, i)
    return x, ids


def build_bert(seed=0, layers=4, hidden=256, heads=4, ffn=1024, seq_len=128, vocab=8000) -> keras.Model:
    """A BERT-style encoder; outputs the last hidden states."""
    x, ids = _transformer("bert", seed, layers, hidden, heads, ffn, seq_len, vocab, causal=False)
    out = keras.layers.Identity(name="hidden_states")(x)
    return _finish(keras.Model(ids, out, name="bert"), seed)


def build_gpt(seed=0, layers=4, hidden=256, heads=4, ffn=1024, seq_len=128, vocab=8000) -> keras.Model:
    """A GPT-style decoder with causal attention; outputs next-token logits of the last position."""
    x, ids = _transformer("gpt", seed, layers, hidden, heads, ffn, seq_len, vocab, causal=True)
    last = LastToken(name="last_token")(x)
    out = keras.layers.Dense(vocab, name="logits")(last)
    return _finish(keras.Model(ids, out, name="gpt"), seed)


def _train(model: keras.Model, split, epochs: int, seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    model.fit(split.x_train, split.y_train, batch_size=64, epochs=epochs, shuffle=True, verbose=0)
    return model


def build_digits_mlp(seed: int = 0, hidden: int = 64, epochs: int = 40) -> keras.Model:
    """An MLP on the 64 pixels of scikit-learn's digits, trained on the fixed training split."""
    from dlcbench.models.datasets import digits

    keras.utils.set_random_seed(seed)
    inp = keras.Input((64,), name="input")
    x = keras.layers.Dense(hidden, activation="relu")(inp)
    out = keras.layers.Dense(10, activation="softmax", name="probs")(x)
    return _train(keras.Model(inp, out, name="digits_mlp"), digits((64,)), epochs, seed)


def build_digits_cnn(seed: int = 0, width: int = 16, epochs: int = 30) -> keras.Model:
    """A small conv net on the 8x8x1 digits images, trained on the fixed training split."""
    from dlcbench.models.datasets import digits

    keras.utils.set_random_seed(seed)
    inp = keras.Input((8, 8, 1), name="input")
    x = keras.layers.Conv2D(width, 3, padding="same", activation="relu")(inp)
    x = keras.layers.Conv2D(2 * width, 3, padding="same", activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    out = keras.layers.Dense(10, activation="softmax", name="probs")(x)
    return _train(keras.Model(inp, out, name="digits_cnn"), digits((8, 8, 1)), epochs, seed)
