"""Regenerate tests/golden/solvers_diffusers.npz: diffusers' Euler/Heun scheduler trajectories for tests/test_solvers.py.

Reference: diffusers on PyTorch, CPU, float32 (versions printed and stored as ``meta_*``). Cases, each a full sampling
loop with a deterministic analytic "network" (:func:`net`, the test has a jnp twin) from a stored start ``x``:

- ``flow_shift1``, ``flow_shift3``: ``FlowMatchEulerDiscreteScheduler(shift=1 | 3)``, 10 steps; the network gets the
  scheduler's timestep (1000 t) and its output is the velocity;
- ``edm_euler``: ``EDMEulerScheduler()`` (sigma 0.002..80, sigma_data 0.5, rho 7, Karras), 10 steps; the network gets
  ``scale_model_input`` (c_in x) and the scheduler's timestep (c_noise = ln(sigma) / 4) and returns F;
- ``heun_eps``, ``heun_v``: ``HeunDiscreteScheduler`` on DDPM's linear betas (T = 1000, linspace spacing), 10 steps,
  epsilon / v prediction, and ``heun_karras``: the same with ``use_karras_sigmas=True``;
- ``euler_eps``: ``EulerDiscreteScheduler`` on the same betas, 10 steps, epsilon prediction.

For each: ``{case}_sigmas`` (the scheduler's grid, ending at 0), ``{case}_x`` (the start, NCHW), ``{case}_traj``
(every ``step`` output in order; Heun returns the Euler predictor after its first-order calls) and ``{case}_timesteps``.

Run: python tests/golden/make_solver_golden.py   (needs torch and diffusers, e.g. a separate venv; tests need neither)
"""
import os

import diffusers
import numpy as np
import torch
from diffusers import (EDMEulerScheduler, EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler,
                       HeunDiscreteScheduler)

HERE = os.path.dirname(os.path.abspath(__file__))
SHAPE = (2, 3, 8, 8)
STEPS = 10
DDPM_BETAS = dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02)  # DDPM's (Heun's defaults are SD's)


def net(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The analytic stand-in for a network (jnp twin in tests/test_solvers.py)."""
    return 0.5 * torch.tanh(x) + 0.1 * torch.cos(x + t.float() / 100.0)


def net_edm(x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
    return 0.5 * torch.tanh(x) + 0.1 * torch.cos(x + c_noise.float())


def randn(seed):
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)


def run(scheduler, x, model, scale_input: bool):
    traj = []
    for t in scheduler.timesteps:
        model_in = scheduler.scale_model_input(x, t) if scale_input else x
        out = model(model_in, t)
        x = scheduler.step(out, t, x).prev_sample
        traj.append(x)
    return torch.stack(traj)


def main():
    out = {"meta_torch": torch.__version__, "meta_diffusers": diffusers.__version__}
    cases = {
        "flow_shift1": (FlowMatchEulerDiscreteScheduler(shift=1.0), net, False),
        "flow_shift3": (FlowMatchEulerDiscreteScheduler(shift=3.0), net, False),
        "edm_euler": (EDMEulerScheduler(), net_edm, True),
        "heun_eps": (HeunDiscreteScheduler(**DDPM_BETAS), net, True),
        "heun_v": (HeunDiscreteScheduler(**DDPM_BETAS, prediction_type="v_prediction"), net, True),
        "heun_karras": (HeunDiscreteScheduler(**DDPM_BETAS, use_karras_sigmas=True), net, True),
        "euler_eps": (EulerDiscreteScheduler(**DDPM_BETAS), net, True),
    }
    for i, (name, (scheduler, model, scale_input)) in enumerate(cases.items()):
        scheduler.set_timesteps(STEPS)
        sigmas = scheduler.sigmas.numpy().astype(np.float64)
        if name.startswith("heun"):  # the interleaved grid sigma_0, sigma_1, sigma_1, ..., 0 -> sigma_0..sigma_{N-1}, 0
            sigmas = np.append(sigmas[:1], sigmas[1::2])
        x = randn(i) * float(getattr(scheduler, "init_noise_sigma", 1.0))
        with torch.no_grad():
            traj = run(scheduler, x.clone(), model, scale_input)
        out[f"{name}_sigmas"] = sigmas
        out[f"{name}_timesteps"] = scheduler.timesteps.numpy()
        out[f"{name}_x"] = x.numpy()
        out[f"{name}_traj"] = traj.numpy()
        print(f"{name}: grid {np.round(sigmas, 4)}; {len(traj)} calls; final |x| mean {traj[-1].abs().mean():.4f}")
    path = os.path.join(HERE, "solvers_diffusers.npz")
    np.savez_compressed(path, **out)
    print(f"wrote {path} (torch {torch.__version__}, diffusers {diffusers.__version__})")


if __name__ == "__main__":
    main()
