"""Methods from the papers bitscape is built on, beyond the core LSQ + KD quick fine-tune.

Each is a small module of pure functions usable from the engine and from study scripts
(no Panel imports):

- ``dual``: dual-precision networks, one set of weights serving a high and a low precision
  mode (``set_mode(model, "high" | "low")``), low mode deployable as the top bit-planes of
  the high-mode weight codes;
- ``cpt``: cyclic precision training (Fu et al., ICLR 2021) and its precision range test;
- ``bsq``: bit-level sparsity quantization (Yang et al., ICLR 2021) as a search that returns a
  per-layer ``Plan``;
- ``policy``: distillation of a full-precision control policy (CartPole, ``engine.training.control``)
  into a low-precision student, evaluated by task return.
"""
