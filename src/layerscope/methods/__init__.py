"""The importance methods. Each takes a model and a value source and returns a ``LayerImportance``.

One public entry point per method (import it from its module; nothing is imported here, so loading
one method does not load the others):

* ablation: :func:`layerscope.methods.ablation.ablate`
* Shapley: :func:`layerscope.methods.shapley.shapley_importance` (the bare estimators:
  :func:`layerscope.methods.shapley.shapley`)
* ILA: :func:`layerscope.methods.ila.run_ila`
* similarity: :func:`layerscope.methods.similarity.similarity` / ``block_influence`` / ``angular_distance``
"""
