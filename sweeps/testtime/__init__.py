"""Test-time compute as a scaling axis: repeated sampling on a verifiable task corpus.

    estimators  pass@k (unbiased, Chen et al. 2021), majority vote at k (exact over k-subsets),
                difficulty buckets, bootstrap intervals over problems
    powerlaw    -log pass@k = a k^-b per model (Schaeffer et al. 2025), bootstrap intervals
    frontier    total compute = training + queries x k x inference per sample; the least-compute
                (model, k) reaching a target accuracy (Snell et al. 2024), break-even query counts
    record      testtime.json from per-model per-problem counts
    evaluate    sample n answers per held-out problem from a GPT (torch; train.data.tasks)

Importing the package is cheap; import the submodules you need.
"""
