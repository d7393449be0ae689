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
  images                the one uint8 -> float conversion, grid rows

The attack runner (runners/attack.py) on finished runs:
  registry              @register_attack(name, applies_to, needs, adversary, view, settings): the
                        one place an attack is named; discover() imports every module here
  run_target            a run opened for attack (read_configs, the rebuilt dataset and method)
  context               what an attack is handed (queries, reference, write buffers)
  gan_runs              fbb (any method), pbb, wb, logan, gi, active (GANs)
  upload_runs           classifier, inversion (DENSE), distilled (DOSFL) on uploads.npz
  merf_runs             merf_mia, merf_recon, merf_aggregate, merf_active (DP-MERF)
  merf_edge             merf_edge_mia: a two-level run's edge server on its own devices (DP-MERF)
"""
