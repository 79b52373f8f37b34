"""Generate the golden files of diffusers' schedulers for tests/test_golden_schedulers.py:

- ``schedulers_diffusers.npz``: schedules, add_noise, DDPM steps, DDIM and DPM-Solver++(2M) loops;
- ``ddim_final_alpha_diffusers.npz``: DDIM trajectories with Stable Diffusion's scheduler settings
  (``set_alpha_to_one=False``, so the last step lands on alphas_cumprod[0], scaled_linear betas, trailing spacing).

Reference: diffusers (DDPMScheduler, DDIMScheduler, DPMSolverMultistepScheduler) on PyTorch, CPU, float32. The versions
used are printed and stored in each file (``meta_*``); the two files may come from different versions. Regenerate with

    pip install torch==2.13.0 diffusers==0.35.2   # in a separate venv (setup.py's "bench" extra); a newer diffusers
                                                  # pulls a huggingface-hub that transformers<5 rejects
    python tests/golden/make_scheduler_golden.py [FILE.npz ...]   # default: every file

The "model" in the full-loop cases is the analytic function :func:`analytic_eps` (the test has a jnp twin), so the
loops are deterministic and need no network weights. Stochastic steps take their noise from arrays stored here.
"""
import os
import sys

import diffusers
import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

HERE = os.path.dirname(os.path.abspath(__file__))
SHAPE = (2, 3, 8, 8)  # NCHW in torch; the test transposes to NHWC


def analytic_eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return 0.5 * torch.tanh(x) + 0.1 * torch.cos(x + t.float() / 100.0)


def randn(seed, shape=SHAPE):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)


def schedules(out):
    for name, beta_schedule in (("linear", "linear"), ("cosine", "squaredcos_cap_v2"), ("scaled_linear", "scaled_linear")):
        kw = dict(beta_start=0.00085, beta_end=0.012) if name == "scaled_linear" else {}
        s = DDPMScheduler(num_train_timesteps=1000, beta_schedule=beta_schedule, **kw)
        out[f"alphas_cumprod_{name}"] = s.alphas_cumprod.numpy()
        out[f"betas_{name}"] = s.betas.numpy()


def add_noise(out):
    s = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    x0, noise = randn(0, (4, 3, 8, 8)), randn(1, (4, 3, 8, 8))
    t = torch.tensor([0, 10, 500, 999])
    out.update(add_noise_x0=x0.numpy(), add_noise_noise=noise.numpy(), add_noise_t=t.numpy(),
               add_noise_out=s.add_noise(x0, noise, t).numpy())
    out["velocity_out"] = s.get_velocity(x0, noise, t).numpy()


def ddpm_steps(out):
    """One DDPMScheduler.step at several t, for each variance type and prediction type; noise recorded."""
    for variance in ("fixed_small", "fixed_large"):
        for pred in ("epsilon", "v_prediction", "sample"):
            s = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", variance_type=variance,
                              clip_sample=False, prediction_type=pred)
            s.set_timesteps(1000)
            key = f"ddpm_{variance}_{pred}"
            ts, xs, outs, noises, prevs = [999, 500, 10, 1, 0], [], [], [], []
            for i, t in enumerate(ts):
                x, model_out = randn(100 + i), randn(200 + i)
                prev = s.step(model_out, t, x, generator=torch.Generator().manual_seed(300 + i)).prev_sample
                xs.append(x), outs.append(model_out), prevs.append(prev)
                noises.append(randn(300 + i))  # the same draw step() made (randn_tensor with this generator)
            out[f"{key}_t"] = np.array(ts)
            out[f"{key}_x"] = torch.stack(xs).numpy()
            out[f"{key}_model"] = torch.stack(outs).numpy()
            out[f"{key}_noise"] = torch.stack(noises).numpy()
            out[f"{key}_prev"] = torch.stack(prevs).numpy()


def ddim_loops(out):
    """Full 50-step DDIM loops with the analytic model: eta 0, eta 1 (stored noise), eta 0 with dynamic thresholding."""
    cases = {"ddim_eta0": dict(eta=0.0), "ddim_eta1": dict(eta=1.0),
             "ddim_eta0_thresh": dict(eta=0.0, thresholding=True)}
    for key, c in cases.items():
        s = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False,
                          set_alpha_to_one=True, steps_offset=0, timestep_spacing="leading",
                          thresholding=c.get("thresholding", False), dynamic_thresholding_ratio=0.995,
                          sample_max_value=2.0)
        s.set_timesteps(50)
        x = randn(7) * 1.0
        out[f"{key}_xT"] = x.numpy()
        noises = []
        for i, t in enumerate(s.timesteps):
            noise = randn(1000 + i)
            noises.append(noise)
            # use_clipped_model_output: eps re-derived from the thresholded x0 (GLIDE / guided-diffusion, and ours)
            x = s.step(analytic_eps(x, t), t, x, eta=c["eta"], variance_noise=noise,
                       use_clipped_model_output=True).prev_sample
        out[f"{key}_timesteps"] = s.timesteps.numpy()
        out[f"{key}_noise"] = torch.stack(noises).numpy()
        out[f"{key}_x0"] = x.numpy()


def dpm_solver_loops(out):
    """Full DPM-Solver++(2M) loops (20 and 10 steps) with the analytic model."""
    for steps in (20, 10):
        s = DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_schedule="linear", solver_order=2,
                                        algorithm_type="dpmsolver++", solver_type="midpoint",
                                        lower_order_final=True, euler_at_final=False, final_sigmas_type="zero",
                                        timestep_spacing="linspace", use_karras_sigmas=False, thresholding=False)
        s.set_timesteps(steps)
        x = randn(8)
        out[f"dpmpp2m_{steps}_xT"] = x.numpy()
        for t in s.timesteps:
            x = s.step(analytic_eps(x, t), t, x).prev_sample
        out[f"dpmpp2m_{steps}_timesteps"] = s.timesteps.numpy()
        out[f"dpmpp2m_{steps}_x0"] = x.numpy()


def ddim_final_alpha_loops(out):
    """DDIM trajectories with Stable Diffusion's DDIMScheduler settings: set_alpha_to_one=False (the last step lands
    on final_alpha_cumprod = alphas_cumprod[0], not 1), scaled_linear betas, timestep_spacing="trailing" (999, 979,
    ..., 19; diffusers applies steps_offset only to "leading", so SD's steps_offset=1 changes nothing here).

    50 steps, so that diffusers' prev_timestep = t - T // S is exactly the next timestep of the trailing chain.
    eta 0, and eta 1 with stored noise (the last step then adds noise too). Every prev_sample is stored.
    """
    for key, eta in (("ddim_final_alpha_eta0", 0.0), ("ddim_final_alpha_eta1", 1.0)):
        s = DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                          clip_sample=False, set_alpha_to_one=False, steps_offset=1, timestep_spacing="trailing",
                          prediction_type="epsilon")
        s.set_timesteps(50)
        x = randn(9)
        out[f"{key}_xT"] = x.numpy()
        noises, trajectory = [], []
        for i, t in enumerate(s.timesteps):
            noise = randn(2000 + i)
            noises.append(noise)
            x = s.step(analytic_eps(x, t), t, x, eta=eta, variance_noise=noise if eta else None).prev_sample
            trajectory.append(x)
        out[f"{key}_timesteps"] = s.timesteps.numpy()
        out[f"{key}_final_alpha_cumprod"] = np.asarray(s.final_alpha_cumprod.numpy())
        out[f"{key}_alphas_cumprod_0"] = np.asarray(s.alphas_cumprod[0].numpy())
        if eta:
            out[f"{key}_noise"] = torch.stack(noises).numpy()
        out[f"{key}_trajectory"] = torch.stack(trajectory).numpy()


FILES = {
    "schedulers_diffusers.npz": (schedules, add_noise, ddpm_steps, ddim_loops, dpm_solver_loops),
    "ddim_final_alpha_diffusers.npz": (ddim_final_alpha_loops,),
}


def main(names):
    for name in names:
        if name not in FILES:
            raise SystemExit(f"unknown golden file {name!r}; choose from {sorted(FILES)}")
        torch.manual_seed(0)
        out = {"meta_diffusers_version": np.array(diffusers.__version__),
               "meta_torch_version": np.array(torch.__version__)}
        for fn in FILES[name]:
            fn(out)
        path = os.path.join(HERE, name)
        np.savez_compressed(path, **out)
        print(f"wrote {path} with diffusers {diffusers.__version__}, torch {torch.__version__}: {len(out)} arrays, "
              f"{os.path.getsize(path) / 1024:.0f} KiB")


if __name__ == "__main__":
    main(sys.argv[1:] or list(FILES))
