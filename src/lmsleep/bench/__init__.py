"""Benchmarks: seeds x methods x tasks, graded like the evaluate stage, written to bench/results/<name>.json.

    lmsleep bench quality --seeds 3          # make bench-quality (issue 3) -> bench/results/seed_quality.json
    lmsleep bench squad --seeds 3            # make bench-squad (issue 5, SEAL's SQuAD protocol)

    metrics.py   R[i][j] -> ACC / BWT / FWT / forgetting; mean and 95% interval over seeds
    methods.py   the methods by name (base, icl, sft, sft_replay, context_distill_offpolicy, sleep_ks)
    harness.py   the Benchmark interface and the run loop; report.py: Markdown table, PNG plots, W&B summary
    quality.py, squad.py   one module per benchmark
"""
