"""Multi-process sampling and evaluation (issue 19): each process samples the batches dealt to it, the samples are
the images one process makes (none twice), and the features, their statistics, FCD, KID and class accuracy equal a
single process's on the same seeds. The slow tests start real ``jax.distributed`` processes on 127.0.0.1 (CPU
collectives), as tests/test_scaleout.py does for training.

Also a worker: ``python tests/test_multiprocess_eval.py DDPM_WORKDIR CLASSIFIER_WORKDIR OUT_DIR NUM`` run by every
process writes what it sampled and scored to OUT_DIR/procK.npz."""
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import ROOT, subprocess_xla_flags  # noqa: E402


def cpu_env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return dict(env, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT, XLA_FLAGS=subprocess_xla_flags(), **extra)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


AUDIT_HOOK = """import os, sys

def _log_writes(event, args):  # every file this process opens for writing under a folder, one line each
    if event == "open" and isinstance(args[0], str) and args[0].startswith(os.environ["AUDIT_UNDER"]):
        mode, flags = args[1] or "", args[2] or 0
        if any(c in mode for c in "wax+") or flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            with open(os.environ["AUDIT_LOG"], "a") as f:
                f.write(args[0] + "\\n")

sys.addaudithook(_log_writes)
"""


def launch(cmd, num_processes, audit=None):
    """``cmd`` as one process, or as ``num_processes`` processes of one jax.distributed job on 127.0.0.1.
    ``audit`` = (folder, tmp): processes other than 0 log every file they open for writing in that folder to
    tmp/writes_K.txt (a Python audit hook in a sitecustomize module)."""
    if num_processes == 1:
        return [subprocess.Popen(cmd, cwd=ROOT, env=cpu_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True)]
    port = free_port()
    procs = []
    for i in range(num_processes):
        env = cpu_env(DDPM_JAX_COORDINATOR=f"127.0.0.1:{port}", DDPM_JAX_NUM_PROCESSES=str(num_processes),
                      DDPM_JAX_PROCESS_ID=str(i))
        if audit and i > 0:
            folder, tmp = audit
            hook = os.path.join(str(tmp), "audit_hook")
            os.makedirs(hook, exist_ok=True)
            with open(os.path.join(hook, "sitecustomize.py"), "w") as f:
                f.write(AUDIT_HOOK)
            env.update(PYTHONPATH=f"{hook}{os.pathsep}{ROOT}", AUDIT_UNDER=str(folder),
                       AUDIT_LOG=os.path.join(str(tmp), f"writes_{i}.txt"))
        procs.append(subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      env=env))
    return procs


def files_written(tmp, process_index=1):
    path = os.path.join(str(tmp), f"writes_{process_index}.txt")
    return open(path).read().split() if os.path.exists(path) else []


def wait(procs):
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for i, (p, out) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, f"process {i} of {len(procs)}:\n{out[-4000:]}"
    return outputs


def sample_hashes(images):
    return [hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest() for x in images]


# ------------------------------------------------------------------ fast: the dealing of batches, in one process

def test_process_shares_deal_every_batch_to_exactly_one_process():
    from ddpm_jax.evaluation.multiprocess import ProcessShare

    for count in (1, 2, 3, 5):
        for num, block in ((36, 8), (7, 8), (40, 8), (1, 3)):
            rows = [ProcessShare(i, count).rows(num, block) for i in range(count)]
            together = np.concatenate(rows)
            assert np.array_equal(np.sort(together), np.arange(num)), (count, num, block)
    assert list(ProcessShare(1, 2).rows(20, 4)) == [4, 5, 6, 7, 12, 13, 14, 15]  # batches 1 and 3
    with pytest.raises(ValueError, match="not in"):
        ProcessShare(2, 2)


def test_shared_generation_makes_the_same_samples_as_one_process():
    """Two shares of a generation (gather=False), put together by their row numbers, are one process's samples
    bit for bit: batch b's noise comes from fold_in(key, b), and sample i keeps its label."""
    import jax
    import jax.numpy as jnp

    from ddpm_jax.evaluation.multiprocess import ProcessShare
    from ddpm_jax.tasks.sampling import generate, shared_sample_fn

    @jax.jit
    def sample_fn(params, x_T, key, cond):  # a stand-in sampler: its output depends on noise, key and label
        return x_T * params + jax.random.normal(key, x_T.shape) + cond["label"][:, None, None, None]

    key, num, batch = jax.random.key(3), 19, 4
    labels = np.arange(num, dtype=np.int32) * 10
    one = generate(sample_fn, jnp.float32(0.5), key, num, (2, 2, 1), batch, {"label": labels})
    parts = {}
    for i in range(2):
        share = ProcessShare(i, 2, gather=False)
        parts[i] = (share.rows(num, batch),
                    generate(shared_sample_fn(sample_fn, share), jnp.float32(0.5), key, num, (2, 2, 1), batch,
                             {"label": labels}))
    assert len(parts[0][1]) == 11 and len(parts[1][1]) == 8  # batches 0, 2, 4 (3 rows) and 1, 3
    together = np.zeros_like(one)
    for rows, x in parts.values():
        together[rows] = x
    assert np.array_equal(together, one)
    assert not set(sample_hashes(parts[0][1])) & set(sample_hashes(parts[1][1]))


def test_gather_rows_refuses_missing_rows():
    from ddpm_jax.evaluation.multiprocess import gather_rows

    x = np.arange(6.0).reshape(3, 2)
    assert np.array_equal(gather_rows(x[::-1], np.array([2, 1, 0]), 3), x)
    with pytest.raises(RuntimeError, match="1 missing"):
        gather_rows(x[:2], np.array([0, 1]), 3)


# ------------------------------------------------------------------ slow: real jax.distributed processes

def toy_workdirs_pair():
    import toy_workdirs

    return (toy_workdirs.shared("ddpm_digits", toy_workdirs.pixel_ddpm),
            toy_workdirs.shared("classifier_digits", toy_workdirs.classifier))


@pytest.mark.slow
def test_two_processes_sample_disjoint_shares_and_score_like_one_process(tmp_path):
    """36 samples in batches of 8 (process 0 makes batches 0, 2, 4; process 1 batches 1, 3): the two processes'
    samples are disjoint and together one process's; the classifier features' mean and covariance, the FCD and
    SampleQuality's scores (the trainer's periodic evaluation) equal one process's; float64 survives the gather."""
    ddpm, classifier = toy_workdirs_pair()
    num = 36
    runs = {}
    procs = {}
    for n in (1, 2):
        out = tmp_path / f"p{n}"
        out.mkdir()
        procs[n] = launch([sys.executable, os.path.abspath(__file__), ddpm, classifier, str(out), str(num)], n)
    for n in (1, 2):
        wait(procs[n])
        runs[n] = [dict(np.load(tmp_path / f"p{n}" / f"proc{i}.npz")) for i in range(n)]
    (one,), (p0, p1) = runs[1], runs[2]
    assert int(p0["process_count"]) == 2 and int(one["process_count"]) == 1
    assert list(p0["rows"]) == list(range(0, 8)) + list(range(16, 24)) + list(range(32, 36))
    assert list(p1["rows"]) == list(range(8, 16)) + list(range(24, 32))
    h0, h1, h = list(p0["hashes"]), list(p1["hashes"]), list(one["hashes"])
    assert len(set(h0 + h1)) == num, "a sample was made twice"
    assert not set(h0) & set(h1)
    merged = [None] * num
    for part in (p0, p1):
        for r, hsh in zip(part["rows"], part["hashes"]):
            merged[r] = hsh
    assert merged == h, "the two processes' samples are not one process's samples"

    for part in (p0, p1):  # every process gets the same, single-process numbers
        mu_err = float(np.max(np.abs(part["mu"] - one["mu"])))
        sigma_err = float(np.max(np.abs(part["sigma"] - one["sigma"])))
        fcd_err = abs(float(part["fcd"]) - float(one["fcd"]))
        print(f"process {int(part['process_index'])} of 2 vs 1 process: FCD {float(part['fcd']):.17g} vs "
              f"{float(one['fcd']):.17g}; max |mu diff| {mu_err:.3g}, max |sigma diff| {sigma_err:.3g}, "
              f"|FCD diff| {fcd_err:.3g}; scores {part['scores']} vs {one['scores']}")
        assert np.array_equal(part["features"], one["features"])  # bit-identical, in row order
        assert np.array_equal(part["mu"], one["mu"]) and np.array_equal(part["sigma"], one["sigma"])
        assert float(part["fcd"]) == float(one["fcd"])
        assert json.loads(str(part["scores"])) == json.loads(str(one["scores"]))
        assert bool(part["float64_exact"])


def latent_ddpm():
    import toy_workdirs

    vae = toy_workdirs.shared("vae_digits", toy_workdirs.vae)
    return toy_workdirs.shared("ldm_digits", toy_workdirs.latent_ddpm, vae)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["pixel", "latent"])
def test_evaluate_command_on_two_processes_matches_one_process(model, tmp_path):
    """``python -m ddpm_jax.evaluate --mode=samples`` as a 2-process job: the same samples (npz), features, mean and
    covariance, FCD, KID and class accuracy as the same command in one process; process 1 prints no report and
    writes nothing. The latent model's autoencoder (a frozen part loaded from its own workdir) is restored and its
    decoder run on every process."""
    ddpm, classifier = toy_workdirs_pair()
    ddpm = ddpm if model == "pixel" else latent_ddpm()
    procs = {}
    for n in (1, 2):
        wd = str(tmp_path / f"wd{n}")
        shutil.copytree(ddpm, wd)
        cmd = [sys.executable, "-m", "ddpm_jax.evaluate", "--mode=samples", "--workdir=" + wd, "--features=classifier",
               "--classifier_workdir=" + classifier, "--num_samples=36", "--save_stats", "--save_features"]
        cmd += [] if model == "pixel" else ["--baseline_split="]
        procs[n] = launch(cmd, n, audit=(wd, tmp_path))
    outputs = {n: wait(procs[n]) for n in (1, 2)}
    assert '"fcd"' in outputs[2][0] and '"fcd"' not in outputs[2][1]  # process 0 reports, process 1 does not
    assert files_written(tmp_path) == []  # process 1 wrote nothing in the workdir

    def results(n):
        wd = str(tmp_path / f"wd{n}")
        report = json.load(open(os.path.join(wd, "eval_classifier_36.json")))
        stats = np.load(os.path.join(wd, "eval_classifier_36_stats.npz"))
        samples = np.load(os.path.join(wd, "samples", "eval_36.npz"))
        return report, stats["mu"], stats["sigma"], np.load(os.path.join(wd, "eval_classifier_36_stats_features.npy")), \
            samples["images"], samples["labels"]

    (r1, mu1, s1, f1, x1, l1), (r2, mu2, s2, f2, x2, l2) = results(1), results(2)
    print(f"evaluate ({model}), 2 processes vs 1: FCD {r2['fcd']!r} vs {r1['fcd']!r}, KID {r2['kid_classifier']!r} vs "
          f"{r1['kid_classifier']!r}, accuracy {r2['class_accuracy']} vs {r1['class_accuracy']}; max |mu diff| "
          f"{np.max(np.abs(mu2 - mu1)):.3g}, max |sigma diff| {np.max(np.abs(s2 - s1)):.3g}")
    assert np.array_equal(x1, x2) and np.array_equal(l1, l2) and len(set(sample_hashes(x2))) == 36
    assert np.array_equal(f1, f2) and np.array_equal(mu1, mu2) and np.array_equal(s1, s2)
    keys = ["fcd", "kid_classifier", "kid_classifier_std", "class_accuracy"]
    keys += ["real_test_fcd", "real_test_kid_classifier", "real_test_class_accuracy"] if model == "pixel" else []
    for key in keys:
        assert r2[key] == r1[key], key


@pytest.mark.slow
def test_sample_mode_on_two_processes_writes_the_single_process_files(tmp_path):
    """``python -m ddpm_jax.main --mode=sample`` as a 2-process job: process 0 writes the grid and .npz that one
    process writes (same bytes, same labels), process 1 writes and logs nothing."""
    ddpm, _ = toy_workdirs_pair()
    procs = {}
    for n in (1, 2):
        wd = str(tmp_path / f"wd{n}")
        shutil.copytree(ddpm, wd)
        procs[n] = launch([sys.executable, "-m", "ddpm_jax.main", "--workdir=" + wd, "--mode=sample",
                           "--num_samples=20", "--class=3", "--class=5"], n, audit=(wd, tmp_path))
    outputs = {n: wait(procs[n]) for n in (1, 2)}
    assert "wrote 20 samples" in outputs[2][0] and "wrote" not in outputs[2][1]
    assert files_written(tmp_path) == []  # process 1 wrote nothing in the workdir
    files = {n: os.path.join(str(tmp_path / f"wd{n}"), "samples", "ddim_5steps_step4") for n in (1, 2)}
    one, two = np.load(files[1] + ".npz"), np.load(files[2] + ".npz")
    assert np.array_equal(one["images"], two["images"]) and list(two["labels"]) == [3, 5] * 10
    assert len(set(sample_hashes(two["images"]))) == 20
    assert open(files[1] + ".png", "rb").read() == open(files[2] + ".png", "rb").read()
    assert json.load(open(files[2] + ".json"))["processes"] == 2


# ------------------------------------------------------------------ the worker

def worker(ddpm_workdir: str, classifier_workdir: str, out_dir: str, num: int) -> None:
    from ddpm_jax.training import distributed

    distributed.initialize_from_env()
    import jax

    from ddpm_jax.data import to_uint8
    from ddpm_jax.evaluation.fid import frechet_distance
    from ddpm_jax.evaluation.multiprocess import ProcessShare, allgather, gather_rows, shared_features
    from ddpm_jax.evaluation.quality import SampleQuality, classifier_features_from_workdir
    from ddpm_jax.evaluation.statistics import feature_statistics
    from ddpm_jax.tasks import load_trained
    from ddpm_jax.tasks.sampling import shared_sample_fn

    trained = load_trained(ddpm_workdir)
    run = trained.run
    share = ProcessShare.of_this_process(gather=False)
    fn = shared_sample_fn(run.task.make_sample_fn(run), share)
    x, labels, _ = run.task.generate(run, trained.params, jax.random.key(7), num, sample_fn=fn)
    images = to_uint8(run.to_pixels(x))
    rows = share.rows(num, min(run.config.sampling.batch_size, num))
    all_images = gather_rows(images, rows, num)

    features = classifier_features_from_workdir(classifier_workdir)
    feats, _ = shared_features(features, all_images, features.batch_size)
    ref, _ = shared_features(features, run.source.images, features.batch_size)
    mu, sigma = feature_statistics(feats)
    fcd = frechet_distance(mu, sigma, *feature_statistics(ref))

    sampling = run.config.sampling.copy_and_resolve_references()
    sampling.num_steps = 3
    scores = SampleQuality(run, features, sampling, 20, 11)(trained.params)

    base = np.array([np.pi, 1 / 3, 1e-300, 1 + 2.0 ** -50], np.float64)  # not representable in float32
    gathered = allgather(base * (jax.process_index() + 1))
    exact = all(np.array_equal(gathered[p], base * (p + 1)) for p in range(jax.process_count()))
    np.savez(os.path.join(out_dir, f"proc{jax.process_index()}.npz"), rows=rows, hashes=np.array(sample_hashes(images)),
             features=feats, mu=mu, sigma=sigma, fcd=fcd, scores=json.dumps(scores), float64_exact=exact,
             process_index=jax.process_index(), process_count=jax.process_count())


if __name__ == "__main__":
    worker(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
