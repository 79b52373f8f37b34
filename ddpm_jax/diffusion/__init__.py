"""The diffusion-math layer: schedules, forward process, parameterizations, losses, samplers, guidance.

Pure ``jnp`` functions over arrays; a model is any callable ``denoise(x_t, t, cond) -> prediction``.
"""
from ddpm_jax.diffusion.guidance import classifier_free_guidance, dynamic_threshold, make_x0_transform
from ddpm_jax.diffusion.losses import diffusion_loss, loss_weight, sample_timesteps
from ddpm_jax.diffusion.process import (
    PREDICTION_TYPES, eps_to_x0, posterior_mean_variance, prediction_to_x0_eps, q_mean_variance, q_sample,
    target_for, v_target, v_to_eps, v_to_x0, x0_to_eps,
)
from ddpm_jax.diffusion.samplers import (
    SAMPLERS, ddim_sample, ddim_sigma, ddim_step, ddpm_sample, ddpm_step, dpm_solver_pp_2m_sample,
    dpm_solver_pp_2m_step, final_log_alpha_bar, num_function_evaluations, sample, sample_loop,
)
from ddpm_jax.diffusion.processes import PROCESS_BUILDERS, DDPMProcess, EDMProcess, FlowProcess, make_process
from ddpm_jax.diffusion.solvers import SOLVERS, karras_sigmas, solve
from ddpm_jax.diffusion.schedules import (
    Schedule, available_schedules, make_schedule, register_schedule, respace_timesteps,
)
