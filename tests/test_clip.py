"""Small CLIP, its contrastive loss (against a numpy reference), CLIP score formulas, pretrained Flax CLIP loading."""
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ddpm_jax.evaluation import clip_score as cs
from ddpm_jax.models import clip
from test_text_encoder import GOLDEN, write_golden_folder


def numpy_contrastive_loss(image_emb, text_emb, log_scale, positives=None):
    """CLIP paper's pseudo-code in float64 numpy, with soft targets spread uniformly over the positives."""
    i = image_emb / np.linalg.norm(image_emb, axis=1, keepdims=True)
    t = text_emb / np.linalg.norm(text_emb, axis=1, keepdims=True)
    logits = (i @ t.T) * np.exp(min(log_scale, math.log(100.0)))
    p = np.eye(len(i)) if positives is None else positives.astype(np.float64)

    def cross_entropy(lg, targets):  # rows of lg are logits, rows of targets sum to 1
        log_prob = lg - lg.max(1, keepdims=True)
        log_prob -= np.log(np.exp(log_prob).sum(1, keepdims=True))
        return -(targets * log_prob).sum(1).mean()

    return (cross_entropy(logits, p / p.sum(1, keepdims=True)) + cross_entropy(logits.T, (p / p.sum(0)).T)) / 2


@pytest.mark.parametrize("log_scale", [clip.LOGIT_SCALE_INIT, 5.0])  # 5.0 > log 100: clipped
def test_contrastive_loss_matches_numpy_reference(log_scale):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    ours = clip.contrastive_loss(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), jnp.float32(log_scale))
    np.testing.assert_allclose(float(ours), numpy_contrastive_loss(a, b, log_scale), rtol=1e-5)
    labels = np.array([0, 1, 0, 2, 1, 0])
    positives = labels[:, None] == labels[None, :]
    ours = clip.contrastive_loss(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), jnp.float32(log_scale),
                                 jnp.asarray(positives))
    np.testing.assert_allclose(float(ours), numpy_contrastive_loss(a, b, log_scale, positives), rtol=1e-5)


def test_contrastive_loss_rewards_matching_pairs_and_clips_scale():
    x = jnp.eye(4)
    matched = clip.contrastive_loss(x, x, jnp.float32(clip.LOGIT_SCALE_MAX))
    shuffled = clip.contrastive_loss(x, x[::-1], jnp.float32(clip.LOGIT_SCALE_MAX))
    assert float(matched) < 1e-10 + 4 * math.exp(-100) * 2 and float(shuffled) > 50
    grad = jax.grad(lambda t: clip.contrastive_loss(x, x[::-1], t))(jnp.float32(6.0))
    assert float(grad) == 0.0  # above log 100 the scale is clipped: no gradient, as CLIP's clamp


TEXT_DIM = 32  # the golden tiny BERT's width


def tiny_clip():
    return clip.SmallCLIP(embed_dim=16, image_channels=(8, 16), text_hidden=32, num_groups=4)


@pytest.fixture(scope="module")
def tiny_params():
    return jax.jit(lambda key: clip.init_clip(tiny_clip(), key, (8, 8, 1), TEXT_DIM))(jax.random.PRNGKey(0))


def test_small_clip_embeddings_are_unit_norm_with_clip_temperature(tiny_params):
    model = tiny_clip()
    images = jax.random.uniform(jax.random.PRNGKey(1), (3, 8, 8, 1), minval=-1, maxval=1)
    img, txt, log_scale = jax.jit(model.apply)({"params": tiny_params}, images,
                                               jax.random.normal(jax.random.PRNGKey(2), (3, TEXT_DIM)))
    assert img.shape == txt.shape == (3, 16)
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(txt, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(float(clip.logit_scale_value(log_scale)), 1 / 0.07, rtol=1e-6)


def toy_batch(n=8, size=8, classes=4):
    """Class k: a bright k-th quarter of the image; its text embedding: a one-hot of k plus noise."""
    rng = np.random.default_rng(0)
    labels = np.arange(n) % classes
    images = -np.ones((n, size, size, 1), np.float32)
    for i, k in enumerate(labels):
        images[i, (k // 2) * size // 2:(k // 2 + 1) * size // 2, (k % 2) * size // 2:(k % 2 + 1) * size // 2] = 1.0
    text = np.eye(classes, TEXT_DIM)[labels] + 0.05 * rng.normal(size=(n, TEXT_DIM))
    return {"image": jnp.asarray(images), "text_emb": jnp.asarray(text, jnp.float32), "label": jnp.asarray(labels)}


def test_make_clip_loss_trains_to_retrieve_the_right_class(tiny_params):
    model = tiny_clip()
    batch = toy_batch()
    params = tiny_params
    loss_fn = clip.make_clip_loss(model, same_label_positives=True)
    tx = optax.adam(1e-2)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt, i):
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, jax.random.PRNGKey(1), i)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt, loss, aux

    first = None
    for i in range(40):
        params, opt, loss, aux = step(params, opt, i)
        first = float(loss) if first is None else first
    assert set(aux) == {"accuracy_i2t", "accuracy_t2i", "logit_scale"}
    assert float(loss) < 0.5 * first
    assert float(aux["accuracy_i2t"]) == 1.0 and float(aux["accuracy_t2i"]) == 1.0


def test_clip_score_formulas_by_hand():
    image = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
    text = np.array([[1.0, 1.0], [0.0, -1.0], [3.0, 4.0]])  # cosines 1/sqrt(2), -1, 1
    c = [1 / math.sqrt(2), -1.0, 1.0]
    assert cs.clip_score(image, text) == pytest.approx(100 * (c[0] + 0 + c[2]) / 3)  # 56.903...
    assert cs.clipscore_hessel(image, text) == pytest.approx(2.5 * (c[0] + 0 + c[2]) / 3)  # 1.4226...
    assert cs.clip_score_torchmetrics(image, text) == pytest.approx(100 * sum(c) / 3)  # clamp after the mean
    assert cs.clip_score_torchmetrics(image[1:2], text[1:2]) == 0.0
    with pytest.raises(ValueError, match=r"\[N, E\]"):
        cs.clip_score(image, text[:2])
    with pytest.raises(ValueError, match="non-zero"):
        cs.clip_score(np.zeros((1, 2)), text[:1])


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
    with np.load(GOLDEN) as f:
        golden = {k: f[k] for k in f.files}
    return golden, write_golden_folder(golden, "bert", str(tmp_path_factory.mktemp("clip") / "bert"))


@pytest.mark.slow
def test_domain_clip_scores_through_the_frozen_text_encoder(bert_folder, tiny_params):
    from ddpm_jax.models.text_encoder import TextEncoder

    encoder = TextEncoder(bert_folder[1], max_length=8)
    domain = clip.DomainCLIP(tiny_clip(), tiny_params, encoder)
    images = toy_batch(4)["image"]
    texts = ["a photo of a bag", "a dress", "a coat", "a shirt"]
    scores = cs.clip_scores(domain, images, texts, batch_size=2)  # two batches of one shape: one compilation
    img = np.concatenate([domain.embed_images(images[:2]), domain.embed_images(images[2:])])
    txt = np.concatenate([domain.embed_texts(texts[:2]), domain.embed_texts(texts[2:])])
    assert img.shape == txt.shape == (4, 16)
    assert scores["clip_score"] == pytest.approx(cs.clip_score(img, txt), rel=1e-6)
    assert scores["clipscore_hessel"] == pytest.approx(cs.clipscore_hessel(img, txt), rel=1e-6)
    with pytest.raises(ValueError, match=r"in \[-1, 1\]"):
        domain.embed_images(images * 3)


@pytest.mark.slow
def test_pretrained_flax_clip_from_local_folder(bert_folder, tmp_path):
    from transformers import CLIPConfig, FlaxCLIPModel

    golden = bert_folder[0]
    with pytest.raises(FileNotFoundError, match="CLIP folder .* does not exist"):
        clip.PretrainedCLIP(str(tmp_path / "missing"))
    files = json.loads(str(golden["clip/files_json"]))
    text_config = json.loads(files.pop("config.json"))
    folder = tmp_path / "clip"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    vision_config = dict(image_size=16, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                         num_attention_heads=4)
    config = CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=16)
    FlaxCLIPModel(config, seed=0).save_pretrained(str(folder))
    model = clip.PretrainedCLIP(str(folder))
    images = toy_batch(2, size=16)["image"]
    img = model.embed_images(images)
    txt = model.embed_texts(["a photo of a sneaker", "a bag"])
    assert img.shape == txt.shape == (2, 16)
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1.0, atol=1e-5)
    pixels = np.repeat((np.asarray(images) + 1) / 2, 3, axis=-1)  # already 16x16: resize is the identity
    pixels = ((pixels - np.array(clip.OPENAI_CLIP_MEAN)) / np.array(clip.OPENAI_CLIP_STD)).transpose(0, 3, 1, 2)
    ref = np.asarray(model.model.get_image_features(jnp.asarray(pixels, jnp.float32)))
    np.testing.assert_allclose(img, ref / np.linalg.norm(ref, axis=1, keepdims=True), atol=1e-5)
