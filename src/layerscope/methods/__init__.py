"""The importance methods. Each takes a model and a value source and returns a ``LayerImportance``:
ablation, Shapley estimators, ILA gates and the similarity baselines."""
