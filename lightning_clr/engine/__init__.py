"""The callback's engine, behind :class:`lightning_clr.CyclicLearningRate`.

The modules, in the one direction data flows: ``_settings`` (what the user asked for, validated) and the
fit's optimizers (``_optimizers``) are resolved by ``_resolve`` (range test, derived step sizes) into a
frozen ``_plan`` (the versioned checkpoint state), which ``_writer`` turns into one LR per optimizer step
(``_skips`` reads a fused optimizer's AMP skip flags one step late, without a host-device sync).
Nothing here is public API: :class:`~lightning_clr.CycleSettings` and :class:`~lightning_clr.CyclePlan` are
exported at the package root.
"""
