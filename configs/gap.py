"""GAP config: the 17,946-parameter CNN with a global-average-pool head, 12 epochs.

Command:

  python -m scripts.seeds --config=configs/gap.py --seeds=0,1,2,3,4,5,6,7,8,9 \
      --root=workdirs/gap -- --config.data_dir=../shared/mnist

The recipe docs/model.md explains layer by layer, and the base the small configs start from.
Result (seeds 0-9, 2-core AMD EPYC CPU, docs/runs/gap): mean final test accuracy 99.46 %, every
seed touches 99.4 % (at epoch 9-12), but only as the one-cycle schedule ends: seed 9 ends at
99.36 % and only seed 6 holds the bar for its last 3 epochs, so another CPU's rounding can
decide it. configs/mnist.py, the default, has the margin.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """The GAP net: batch 128, 12 epochs, rotations and shifts, no weight averaging."""
  c = ml_collections.ConfigDict()

  # --- Data
  c.data_dir = ''  # Folder of the four MNIST IDX files (.gz or raw). '' = download them once.
  c.data_url = 'https://storage.googleapis.com/cvdf-datasets/mnist/'  # TFDS's MNIST URL.
  c.download_dir = ''  # Download cache; '' = TFDS's ($TFDS_DATA_DIR or ~/tensorflow_datasets).

  # --- Model (nets/cnn.py)
  c.arch = 'gap'  # A nets.cnn.ARCHITECTURES name or a layer spec (nets.cnn.parse).
  c.dropout_rate = 0.0  # Used only by architectures with a 'dropout' layer.

  # --- Optimisation: SGD + Nesterov momentum, one-cycle learning rate.
  c.num_epochs = 12  # Passes over the 60,000 training images.
  c.batch_size = 128  # Global batch, split across all devices.
  c.learning_rate = 0.1  # Peak of the one-cycle schedule.
  c.warmup_fraction = 0.25  # Fraction of all steps spent rising to the peak.
  c.momentum = 0.9  # Nesterov momentum.
  c.weight_decay = 5e-4  # L2 decay added to the gradient (all parameters).
  c.label_smoothing = 0.0  # Cross-entropy label smoothing in [0, 1).
  c.ema_decay = 0.0  # Evaluate an exponential moving average of the weights (0 = off).
  c.swa_from_epoch = 0  # From this epoch on, the average is every step's equal mean (SWA; 0 = off).
  c.swa_learning_rate = 0.0  # From swa_from_epoch on, the learning rate held here (0 = one-cycle).
  c.gradients = 'autodiff'  # 'hand': the chain rule of nets/cnn_backprop.py instead of jax.grad.

  # --- Augmentation (on device, inside the train step)
  c.max_degrees = 7.0  # Random rotation in [-max_degrees, +max_degrees].
  c.max_shift = 2.0  # Random translation in pixels, per axis.
  c.max_scale = 0.0  # Random zoom by a factor in [1 - max_scale, 1 + max_scale].
  c.max_brightness = 0.0  # Pixels times a random factor in [1 - max_brightness, 1 + ...].
  c.max_contrast = 0.0  # Spread about the image mean by a factor in [1 - max_contrast, 1 + ...].
  c.elastic_alpha = 0.0  # Elastic warp (Simard et al. 2003): smoothed noise times alpha px.
  c.elastic_sigma = 4.0  # The elastic noise's Gaussian smoothing, in pixels (std).
  c.clean_epochs = 0  # The last clean_epochs epochs train without augmentation (0 = none).

  # --- Run
  c.seed = 0  # Seeds init, shuffling, augmentation and dropout.
  c.eval_batch_size = 1000  # Test images per evaluation step (the last batch is padded).
  c.steps_per_call = 0  # Steps per jitted call; 0: auto (CPU: 1 in epoch 1, then 4; else an epoch).
  c.checkpoints_to_keep = 3  # Newest checkpoints kept in workdir/checkpoints.
  c.plots = True  # Write training-curve and misclassified-digit PNGs at the end.
  return c
