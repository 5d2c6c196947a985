"""The training library: LightFM (hybrid, WARP) over the cross-channel interaction history,
split as data → features → split → training → evaluation → artifact, with one entry point,
`vicino.models.pipeline.train_and_publish`, shared by `vicino train`, the scheduler and the notebooks.
Serving never imports it: it reads the artifact (services/kernel/contracts/model_artifact.py)."""
