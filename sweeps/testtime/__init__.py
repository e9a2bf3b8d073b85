"""Test-time compute as a scaling axis: repeated sampling on a verifiable task corpus.

    estimators  pass@k (unbiased, Chen et al. 2021) and majority vote at k (exact over k-subsets),
                from train/testtime.py; difficulty buckets, bootstrap intervals over problems
    powerlaw    -log pass@k = a k^-b per model (Schaeffer et al. 2025), bootstrap intervals
    frontier    total compute = training + queries x k x inference per sample; the least-compute
                (model, k) reaching a target accuracy (Snell et al. 2024), break-even query counts
    record      testtime.json from per-model per-problem counts
    report      the end of a testtime sweep: runs' counts -> testtime.json -> plots, testtime.md/html, wandb

Sampling n answers per held-out problem from a trained GPT is the run's job: train/testtime.py.

Importing the package is cheap; import the submodules you need.
"""
