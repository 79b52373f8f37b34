"""Evaluation: Inception features, feature statistics, Fréchet distance (FID), KID, Inception Score, reference statistics files."""
from ddpm_jax.evaluation.fid import check_sample_count, frechet_distance, sqrtm_psd, trace_sqrt_product
from ddpm_jax.evaluation.inception_score import inception_score
from ddpm_jax.evaluation.kid import kernel_inception_distance, mmd2_unbiased, polynomial_kernel
from ddpm_jax.evaluation.statistics import RunningStatistics, check_features, feature_statistics
from ddpm_jax.evaluation.stats_file import check_compatible, load_stats, save_stats
from ddpm_jax.evaluation.features import InceptionFeatures
from ddpm_jax.evaluation.resize import resize_bilinear
