"""Privacy attacks: membership inference, model / gradient inversion, malicious server.

  metrics               ROC AUC, TPR@FPR, advantage; MSE / PSNR / SSIM
  nearest               chunked nearest-neighbour distances (never the full [Q, G] matrix)
  membership_gan        GAN-Leaks full / partial black-box, white-box, calibrated
  logan                 LOGAN discriminator-logit MIA
  membership_classifier loss / confidence threshold MIA on (per-client) classifiers
  model_inversion       class-score inversion with TV / L2 priors
  distilled_match       distilled images vs. members and non-members (DOSFL)
  gradient_inversion    DLG / iDLG / Inverting Gradients
  active                imprint module (Robbing the Fed), DP sweeps, client isolation
  merf                  DP-MERF uploads: membership, MAP inversion, crafted frequencies, GDP bounds
"""
