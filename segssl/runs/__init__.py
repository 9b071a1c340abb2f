"""One run folder and its life: the Hydra wrapper that accepts the folder and finds the configs
(``hydra_app``), its lock (``lock``), resuming it (``resume``), which checkpoint is tested
(``checkpoints``) and its results and run ids (``results``). Commands use this package; it
imports no command."""
